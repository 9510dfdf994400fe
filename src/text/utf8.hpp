// UTF-8 helpers for the text front-end (tokenizer, detokenizer, chat).
//
// Validity follows Unicode's Table 3-7 (no overlongs, no surrogates, nothing above U+10FFFF).
// Invalid input is repaired by replacing each *maximal subpart* of an ill-formed sequence with
// one U+FFFD (the Unicode / WHATWG "substitution of maximal subparts" practice, also what Rust's
// String::from_utf8_lossy and Python's errors="replace" do).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace moeflux::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// What starts at s[pos] (pos < s.size()).
struct Scan {
  size_t len;      // valid: the character's length (1..4); else the maximal subpart's (>= 1)
  bool valid;      // a whole, well-formed character
  bool truncated;  // not valid only because `s` ends: more bytes could still complete it
};
Scan scan(std::string_view s, size_t pos);

bool is_valid(std::string_view s);
// `s` with every maximal invalid subpart replaced by U+FFFD (a copy of `s` when valid).
std::string sanitize(std::string_view s);

// The code point at s[pos] and advances pos; s must be valid UTF-8 at pos.
char32_t decode(std::string_view s, size_t& pos);
// Appends cp (a Unicode scalar value) encoded as UTF-8.
void append(std::string& out, char32_t cp);

}  // namespace moeflux::utf8
