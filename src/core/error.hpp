// Error handling, three tiers (DESIGN.md):
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

namespace moeflux {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] inline void fail(const std::string& msg) { throw Error(msg); }

// Throws Error("<what>: <strerror(errno)>").
[[noreturn]] inline void throw_errno(const std::string& what) {
  const int e = errno;
  throw Error(what + ": " + std::strerror(e));
}

[[noreturn]] inline void assert_failed(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "moeflux: internal error: assertion `%s` failed at %s:%d\n", cond, file, line);
  std::abort();
}

}  // namespace moeflux

// Internal invariant; stays on in release builds.
#define MF_ASSERT(cond) \
  ((cond) ? (void)0 : ::moeflux::assert_failed(#cond, __FILE__, __LINE__))
