// Python str methods on UTF-8 strings, as chat templates call them (str.strip, split, ...).
//
// Strings are sequences of code points, as in Python: indices, lengths and strip sets count code
// points. A byte that is not part of valid UTF-8 counts as one code point of its own (such bytes
// cannot come from templates or JSON, only from a caller's raw strings). Case mappings are
// Unicode's (ICU): upper / lower the full mappings, title / capitalize per code point.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moeflux::jinja::pystr {

// The byte offsets at which the code points of s start, plus s.size() at the end.
std::vector<size_t> code_point_offsets(std::string_view s);
size_t length(std::string_view s);

// Python's str.isspace() for one code point.
bool is_space(char32_t cp);

// strip / lstrip / rstrip: `chars` unset strips whitespace, else any code point of `chars`.
std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                  bool right);
// str.split(sep, maxsplit): sep unset splits on runs of whitespace; maxsplit < 0: no limit.
// Throws EvalError for an empty separator.
std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep,
                               int64_t maxsplit);
std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep,
                                int64_t maxsplit);
// str.replace(old, new, count); count < 0: all. Builds at most max_bytes (EvalError beyond).
std::string replace(std::string_view s, std::string_view from, std::string_view to, int64_t count,
                    size_t max_bytes);
// str.find (code point index, -1 if absent) and str.count (non-overlapping).
int64_t find(std::string_view s, std::string_view sub);
int64_t count(std::string_view s, std::string_view sub);
std::vector<std::string> splitlines(std::string_view s);

std::string upper(std::string_view s);
std::string lower(std::string_view s);
std::string capitalize(std::string_view s);
// Python's str.title() (str method).
std::string title_method(std::string_view s);
// Jinja's `title` filter: words begin after runs of '-', whitespace, '(', '{', '[', '<'.
// (Python's own title(): a letter is title-cased after a non-cased character.)
std::string title_filter(std::string_view s);

}  // namespace moeflux::jinja::pystr
