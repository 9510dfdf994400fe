// Helpers shared by the tests: temporary directories, running the moeflux binary, fixtures.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace moeflux::test {

namespace fs = std::filesystem;

// A fresh directory removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "moeflux-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) std::abort();
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string shell_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

// Runs moeflux (`binary`: the one built, or a copy) with `env` assignments ("A=1 B=2", may be
// empty) in front and `input` on standard input; captures the exit code, stdout and stderr.
inline CommandResult run_moeflux_with(const std::vector<std::string>& args, const std::string& env,
                                      const std::string& input,
                                      const std::string& binary = MOEFLUX_BINARY) {
  TempDir io;
  std::ofstream(io / "in", std::ios::binary) << input;
  std::string cmd = env + " " + shell_quote(binary);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " <" + shell_quote(io / "in") + " >" + shell_quote(io / "out") + " 2>" +
         shell_quote(io / "err");
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(io / "out");
  r.err = read_text(io / "err");
  return r;
}

inline CommandResult run_moeflux(const std::vector<std::string>& args) {
  return run_moeflux_with(args, "", "");
}

// moeflux running in the background, for tests that send it signals or feed its input bit by
// bit: standard input is a pipe (write(), close_input()), stdout and stderr go to files.
class BackgroundMoeflux {
 public:
  explicit BackgroundMoeflux(const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe(fds) != 0) std::abort();
    pid_ = ::fork();
    if (pid_ < 0) std::abort();
    if (pid_ == 0) {
      ::dup2(fds[0], 0);
      ::close(fds[0]);
      ::close(fds[1]);
      const int out = ::open((io_ / "out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = ::open((io_ / "err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(out, 1);
      ::dup2(err, 2);
      std::vector<char*> argv = {const_cast<char*>(MOEFLUX_BINARY)};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(MOEFLUX_BINARY, argv.data());
      ::_exit(127);
    }
    ::close(fds[0]);
    input_ = fds[1];
  }
  ~BackgroundMoeflux() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    close_input();
  }
  void write(const std::string& s) {
    EXPECT_EQ(::write(input_, s.data(), s.size()), ssize_t(s.size()));
  }
  void close_input() {
    if (input_ >= 0) ::close(input_);
    input_ = -1;
  }
  void signal(int sig) { ::kill(pid_, sig); }
  std::string out() const { return read_text(io_ / "out"); }
  std::string err() const { return read_text(io_ / "err"); }
  // Waits (polling) until `ready(out, err)` holds; false after `seconds`.
  template <typename Ready>
  bool wait_until(Ready ready, double seconds = 30) {
    for (int i = 0; i < int(seconds * 200); ++i) {
      if (ready(out(), err())) return true;
      ::usleep(5000);
    }
    return false;
  }
  // Waits for the exit (SIGKILL after `seconds`); the exit code as a shell reports it.
  CommandResult finish(double seconds = 30) {
    close_input();
    int status = 0;
    pid_t done = 0;
    for (int i = 0; i < int(seconds * 200) && (done = ::waitpid(pid_, &status, WNOHANG)) == 0; ++i)
      ::usleep(5000);
    if (done == 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
    }
    pid_ = -1;
    CommandResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = out();
    r.err = err();
    return r;
  }

 private:
  TempDir io_;
  pid_t pid_ = -1;
  int input_ = -1;
};

// A failed command the way users must see it: exit code `code` (1; 2 for a usage error), one line
// "moeflux: error: ..." that mentions `must_mention`.
inline void expect_clean_failure(const CommandResult& r, const std::string& must_mention,
                                 int code = 1) {
  EXPECT_EQ(r.exit_code, code) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("moeflux: error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(must_mention), std::string::npos)
      << "expected '" << must_mention << "' in: " << r.err;
}

// A command line that cannot work: exit code 2, one line naming `must_mention`.
inline void expect_usage_error(const CommandResult& r, const std::string& must_mention) {
  expect_clean_failure(r, must_mention, 2);
}

inline std::string fixture_dir(const std::string& name) {
  return std::string(MOEFLUX_FIXTURE_DIR) + "/" + name;
}

inline std::vector<int> fixture_tokens(const std::string& name) {
  const auto j = nlohmann::json::parse(read_text(fixture_dir(name) + "/tokens.json"));
  return j.at("tokens").get<std::vector<int>>();
}

inline std::string join_ints(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

}  // namespace moeflux::test
