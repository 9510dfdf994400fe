// Helpers shared by the tests: temporary directories, running the moeflux binary, fixtures.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
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

// Runs `moeflux <args>` and captures its exit code, stdout and stderr.
// Runs moeflux with `env` assignments ("A=1 B=2", may be empty) in front and `input` on standard
// input; captures stdout and stderr.
inline CommandResult run_moeflux_with(const std::vector<std::string>& args, const std::string& env,
                                      const std::string& input) {
  TempDir io;
  std::ofstream(io / "in", std::ios::binary) << input;
  std::string cmd = env + " " + shell_quote(MOEFLUX_BINARY);
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
