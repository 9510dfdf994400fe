#include "text/jinja/pystr.hpp"

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include "text/jinja/value.hpp"
#include "text/utf8.hpp"

namespace moeflux::jinja::pystr {

namespace {

// The code point at s[pos] (an invalid byte stands for itself) and its length in bytes.
char32_t at(std::string_view s, size_t pos, size_t& len) {
  const utf8::Scan sc = utf8::scan(s, pos);
  if (!sc.valid) {
    len = 1;
    return char32_t(0xDC00 + static_cast<unsigned char>(s[pos]));  // Python's surrogateescape
  }
  size_t p = pos;
  const char32_t cp = utf8::decode(s, p);
  len = p - pos;
  return cp;
}

bool in_set(char32_t cp, std::string_view set) {
  for (size_t p = 0, n = 0; p < set.size(); p += n)
    if (at(set, p, n) == cp) return true;
  return false;
}

// Python's "cased" characters (categories Lu, Ll, Lt), which title() capitalises after.
bool is_cased(char32_t cp) {
  return u_isUUppercase(UChar32(cp)) || u_isULowercase(UChar32(cp)) || u_istitle(UChar32(cp));
}

// Full Unicode case mapping with the root locale (as Python's str.upper / str.lower: "ß" upper
// is "SS"). Invalid bytes are kept as they are.
std::string case_map(std::string_view s, bool up) {
  if (!utf8::is_valid(s)) {
    std::string out(s);
    for (char& c : out)
      if (up ? (c >= 'a' && c <= 'z') : (c >= 'A' && c <= 'Z')) c = char(c ^ 0x20);
    return out;
  }
  icu::UnicodeString u =
      icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), int32_t(s.size())));
  if (up) {
    u.toUpper(icu::Locale::getRoot());
  } else {
    u.toLower(icu::Locale::getRoot());
  }
  std::string out;
  u.toUTF8String(out);
  return out;
}

// One code point, lower-cased or title-cased (simple mappings, per code point).
void append_cased(std::string& out, char32_t cp, bool title) {
  if (cp >= 0xDC80 && cp <= 0xDCFF) {  // an invalid byte (see at())
    out += char(cp - 0xDC00);
    return;
  }
  utf8::append(out, char32_t(title ? u_totitle(UChar32(cp)) : u_tolower(UChar32(cp))));
}

}  // namespace

std::vector<size_t> code_point_offsets(std::string_view s) {
  std::vector<size_t> offs;
  offs.reserve(s.size() + 1);
  for (size_t p = 0, n = 0; p < s.size(); p += n) {
    offs.push_back(p);
    at(s, p, n);
  }
  offs.push_back(s.size());
  return offs;
}

size_t length(std::string_view s) {
  size_t count = 0;
  for (size_t p = 0, n = 0; p < s.size(); p += n, ++count) at(s, p, n);
  return count;
}

bool is_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                  bool right) {
  auto strippable = [&](char32_t cp) { return chars ? in_set(cp, *chars) : is_space(cp); };
  const std::vector<size_t> offs = code_point_offsets(s);
  size_t b = 0, e = offs.size() - 1;  // code point indices [b, e)
  size_t n = 0;
  while (left && b < e && strippable(at(s, offs[b], n))) ++b;
  while (right && e > b && strippable(at(s, offs[e - 1], n))) --e;
  return std::string(s.substr(offs[b], offs[e] - offs[b]));
}

std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep,
                               int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) eval_fail("empty separator");
    size_t start = 0;
    while (maxsplit < 0 || int64_t(out.size()) < maxsplit) {
      const size_t at_ = s.find(*sep, start);
      if (at_ == std::string_view::npos) break;
      out.emplace_back(s.substr(start, at_ - start));
      start = at_ + sep->size();
    }
    out.emplace_back(s.substr(start));
    return out;
  }
  size_t p = 0, n = 0;
  while (true) {
    while (p < s.size() && is_space(at(s, p, n))) p += n;
    if (p >= s.size()) break;
    if (maxsplit >= 0 && int64_t(out.size()) >= maxsplit) {
      out.emplace_back(s.substr(p));  // the rest, trailing whitespace kept (as Python)
      break;
    }
    size_t e = p;
    while (e < s.size() && !is_space(at(s, e, n))) e += n;
    out.emplace_back(s.substr(p, e - p));
    p = e;
  }
  return out;
}

std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep,
                                int64_t maxsplit) {
  if (maxsplit < 0) return split(s, sep, maxsplit);
  std::vector<std::string> rev;
  if (sep) {
    if (sep->empty()) eval_fail("empty separator");
    size_t end = s.size();
    while (int64_t(rev.size()) < maxsplit) {
      if (end < sep->size()) break;
      const size_t at_ = s.rfind(*sep, end - sep->size());
      if (at_ == std::string_view::npos) break;
      rev.emplace_back(s.substr(at_ + sep->size(), end - at_ - sep->size()));
      end = at_;
    }
    rev.emplace_back(s.substr(0, end));
    return {rev.rbegin(), rev.rend()};
  }
  // Whitespace: words from the right; then the rest, as it is, once maxsplit words are taken.
  const std::vector<size_t> offs = code_point_offsets(s);
  size_t i = offs.size() - 1, n = 0;
  auto space_before = [&](size_t k) { return is_space(at(s, offs[k - 1], n)); };
  while (true) {
    while (i > 0 && space_before(i)) --i;
    if (i == 0) break;
    if (int64_t(rev.size()) == maxsplit) {
      rev.emplace_back(s.substr(0, offs[i]));  // the rest, leading whitespace kept
      break;
    }
    size_t j = i;
    while (j > 0 && !space_before(j)) --j;
    rev.emplace_back(s.substr(offs[j], offs[i] - offs[j]));
    i = j;
  }
  return {rev.rbegin(), rev.rend()};
}

std::string replace(std::string_view s, std::string_view from, std::string_view to, int64_t count,
                    size_t max_bytes) {
  std::string out;
  auto add = [&](std::string_view piece) {
    if (out.size() + piece.size() > max_bytes) eval_fail("string too long");
    out.append(piece);
  };
  if (from.empty()) {
    // Python inserts `to` before every code point and at the end.
    const std::vector<size_t> offs = code_point_offsets(s);
    int64_t done = 0;
    for (size_t i = 0; i + 1 < offs.size(); ++i) {
      if (count < 0 || done < count) add(to), ++done;
      add(s.substr(offs[i], offs[i + 1] - offs[i]));
    }
    if (count < 0 || done < count) add(to);
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at_ = s.find(from, start);
    if (at_ == std::string_view::npos) break;
    add(s.substr(start, at_ - start));
    add(to);
    start = at_ + from.size();
    ++done;
  }
  add(s.substr(start));
  return out;
}

int64_t find(std::string_view s, std::string_view sub) {
  const size_t at_ = s.find(sub);
  return at_ == std::string_view::npos ? -1 : int64_t(length(s.substr(0, at_)));
}

int64_t count(std::string_view s, std::string_view sub) {
  if (sub.empty()) return int64_t(length(s)) + 1;
  int64_t c = 0;
  for (size_t p = s.find(sub); p != std::string_view::npos; p = s.find(sub, p + sub.size())) ++c;
  return c;
}

std::vector<std::string> splitlines(std::string_view s) {
  std::vector<std::string> out;
  size_t start = 0, p = 0, n = 0;
  while (p < s.size()) {
    const char32_t cp = at(s, p, n);
    const bool br = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C ||
                    cp == 0x1D || cp == 0x1E || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
    if (!br) {
      p += n;
      continue;
    }
    out.emplace_back(s.substr(start, p - start));
    p += n;
    if (cp == '\r' && p < s.size() && s[p] == '\n') ++p;
    start = p;
  }
  if (start < s.size()) out.emplace_back(s.substr(start));
  return out;
}

std::string upper(std::string_view s) {
  return case_map(s, true);
}

std::string lower(std::string_view s) {
  return case_map(s, false);
}

std::string capitalize(std::string_view s) {
  std::string out;
  for (size_t p = 0, n = 0; p < s.size(); p += n) append_cased(out, at(s, p, n), p == 0);
  return out;
}

std::string title_method(std::string_view s) {
  std::string out;
  bool prev_cased = false;
  for (size_t p = 0, n = 0; p < s.size(); p += n) {
    const char32_t cp = at(s, p, n);
    append_cased(out, cp, !prev_cased);
    prev_cased = is_cased(cp);
  }
  return out;
}

std::string title_filter(std::string_view s) {
  std::string out;
  bool word_start = true;
  for (size_t p = 0, n = 0; p < s.size(); p += n) {
    const char32_t cp = at(s, p, n);
    const bool sep = cp == '-' || is_space(cp) || cp == '(' || cp == '{' || cp == '[' || cp == '<';
    if (sep) {
      out.append(s.substr(p, n));
      word_start = true;
      continue;
    }
    append_cased(out, cp, word_start);
    word_start = false;
  }
  return out;
}

}  // namespace moeflux::jinja::pystr
