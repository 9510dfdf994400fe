// Errors of the Jinja interpreter and the limits that keep untrusted templates bounded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.hpp"

namespace moeflux::jinja {

// A malformed template (parse time) or a failed render (runtime: an undefined value used, a
// type error, raise_exception, a limit reached). One line: "chat template:LINE:COL: message".
class TemplateError : public Error {
 public:
  TemplateError(int line, int col, const std::string& message)
      : Error("chat template:" + std::to_string(line) + ":" + std::to_string(col) + ": " + message),
        line_(line),
        col_(col),
        message_(message) {}
  int line() const { return line_; }
  int col() const { return col_; }
  const std::string& message() const { return message_; }

 private:
  int line_, col_;
  std::string message_;
};

// Bounds on what one template may cost; a template that reaches one fails with a TemplateError
// instead of exhausting the stack, the memory or the time of the process.
struct Limits {
  size_t max_template_bytes = size_t(1) << 20;  // source text
  int max_nesting = 200;                        // parser depth: blocks and expressions
  int max_call_depth = 64;                      // nested macro calls (recursion)
  size_t max_string_bytes = size_t(64) << 20;   // the output and every string built
  size_t max_total_bytes = size_t(1) << 30;     // all strings and lists built, summed
  uint64_t max_steps = 50'000'000;              // evaluation steps (expressions, iterations)
};

// Line and column (1-based; the column counts bytes) of byte `offset` of `text`.
void line_col(std::string_view text, size_t offset, int& line, int& col);

}  // namespace moeflux::jinja
