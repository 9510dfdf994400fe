// Error handling, three tiers (docs/DESIGN.md, principle 7):
//  1. untrusted input (files, arguments, requests): throw moeflux::Error with a one-line message
//     naming the file or argument and the problem;
//  2. internal invariants: MF_ASSERT, active in release builds, aborts with file:line;
//  3. system calls: MF_SYSCHECK / throw_errno, message carries errno text and file:line.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

namespace moeflux {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] inline void fail(const std::string& msg) {
  throw Error(msg);
}

// Untrusted input that is the command line's fault: a malformed or impossible option value, or
// options that conflict. The tool exits with status 2 for these, 1 for every other Error.
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& what) : Error(what) {}
};

[[noreturn]] inline void usage_fail(const std::string& msg) {
  throw UsageError(msg);
}

// An untrusted string made safe to quote in a one-line message: bytes outside printable ASCII
// become \xNN, and more than max_len bytes are cut, with "..." appended.
inline std::string printable(std::string_view s, size_t max_len = 64) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > max_len) out += "...";
  return out;
}

// Throws Error("<what>: <strerror(errno)>").
[[noreturn]] inline void throw_errno(const std::string& what) {
  const int e = errno;
  throw Error(what + ": " + std::strerror(e));
}

[[noreturn]] inline void assert_failed(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "moeflux: internal error: assertion `%s` failed at %s:%d\n", cond, file,
               line);
  std::abort();
}

}  // namespace moeflux

// Internal invariant; stays on in release builds.
#define MF_ASSERT(cond) ((cond) ? (void)0 : ::moeflux::assert_failed(#cond, __FILE__, __LINE__))
