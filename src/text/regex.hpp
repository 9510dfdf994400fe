// The regular expressions of tokenizer.json pre-tokenizers, on PCRE2 (UTF + UCP, JIT when the
// library has it).
//
// Hugging Face `tokenizers` runs these patterns on Oniguruma; PCRE2 reads the same Perl-style
// syntax (\p{L}, (?i:...), (?!...)). Oniguruma's \uHHHH escape is rewritten to \x{HHHH}. Match
// iteration follows Oniguruma's find_iter as `tokenizers` uses it: leftmost matches, left to
// right, each search starting where the previous match ended, and an empty match that starts
// where the previous match ended is skipped (the search moves on by one character).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moeflux {

class Regex {
 public:
  // Compiles `pattern` (literal: match the text itself, as a Split "String" pattern does).
  // Throws moeflux::Error "<what>: invalid regex ...: <PCRE2 message> at offset N".
  Regex(std::string_view pattern, bool literal, const std::string& what);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // The [begin, end) byte ranges of the matches in `subject`, which must be valid UTF-8.
  // Thread-safe. Throws moeflux::Error "<what>: ..." if PCRE2 gives up (match limits).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view subject) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moeflux
