// A `moeflux serve` child process on a free loopback port, for tests that talk HTTP to it.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace moeflux::test {

inline std::string bundled_model() {
  return std::string(MOEFLUX_FIXTURE_DIR) + "/../../models/moeflux-tiny-kjv";
}

class ServerProcess {
 public:
  // Starts `moeflux serve --port 0 ARGS` on `model` (the bundled one by default) and waits for
  // its port; `err_path`: a file that receives its stderr (else the test's stderr).
  explicit ServerProcess(const std::vector<std::string>& args,
                         const std::string& model = bundled_model(),
                         const std::string& err_path = "") {
    int out[2];
    if (::pipe(out) != 0) std::abort();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      if (!err_path.empty()) {
        const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (err < 0) ::_exit(126);
        ::dup2(err, 2);
        ::close(err);
      }
      ::close(out[0]);
      ::close(out[1]);
      std::vector<std::string> argv = {MOEFLUX_BINARY, "serve", "-m",        model,
                                       "--port",       "0",     "--threads", "2"};
      argv.insert(argv.end(), args.begin(), args.end());
      std::vector<char*> c;
      for (auto& a : argv) c.push_back(a.data());
      c.push_back(nullptr);
      ::execv(c[0], c.data());
      ::_exit(127);
    }
    ::close(out[1]);
    out_ = ::fdopen(out[0], "r");
    char line[256];
    if (std::fgets(line, sizeof line, out_)) {
      const std::string s = line;
      const size_t colon = s.rfind(':');
      if (s.starts_with("listening on ") && colon != std::string::npos)
        port_ = std::stoi(s.substr(colon + 1));
    }
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_) std::fclose(out_);
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  int port() const { return port_; }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    return c;
  }
  // Sends SIGTERM and returns the exit status (-1 if it did not exit within `seconds`).
  int terminate(int seconds = 20) {
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < seconds * 20; ++i) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  int port_ = 0;
  bool exited_ = false;
};

}  // namespace moeflux::test
