#include "text/utf8.hpp"

#include "core/error.hpp"

namespace moeflux::utf8 {

Scan scan(std::string_view s, size_t pos) {
  MF_ASSERT(pos < s.size());
  const auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) return {1, true, false};
  // Table 3-7: the lead byte fixes the length and the range of the second byte; later bytes
  // are 80..BF.
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 == 0xE0) {
    n = 3, lo = 0xA0;
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    n = 3;
  } else if (b0 == 0xED) {
    n = 3, hi = 0x9F;
  } else if (b0 == 0xF0) {
    n = 4, lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    n = 4;
  } else if (b0 == 0xF4) {
    n = 4, hi = 0x8F;
  } else {
    return {1, false, false};  // 80..C1, F5..FF never start a character
  }
  for (size_t k = 1; k < n; ++k) {
    if (pos + k >= s.size()) return {k, false, true};
    const auto b = static_cast<unsigned char>(s[pos + k]);
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return {k, false, false};
  }
  return {n, true, false};
}

bool is_valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Scan sc = scan(s, i);
    if (!sc.valid) return false;
    i += sc.len;
  }
  return true;
}

std::string sanitize(std::string_view s) {
  if (is_valid(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    const Scan sc = scan(s, i);
    if (sc.valid) {
      out.append(s.substr(i, sc.len));
    } else {
      out.append(kReplacement);
    }
    i += sc.len;
  }
  return out;
}

char32_t decode(std::string_view s, size_t& pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) {
    ++pos;
    return b0;
  }
  const Scan sc = scan(s, pos);
  MF_ASSERT(sc.valid);
  char32_t cp = b0 & (sc.len == 2 ? 0x1F : sc.len == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < sc.len; ++k)
    cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3F);
  pos += sc.len;
  return cp;
}

void append(std::string& out, char32_t cp) {
  MF_ASSERT(cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF));
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace moeflux::utf8
