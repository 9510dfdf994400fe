#include "text/jinja/lexer.hpp"

#include <cstring>
#include <optional>

#include "text/jinja/pystr.hpp"
#include "text/utf8.hpp"

namespace moeflux::jinja {

void line_col(std::string_view text, size_t offset, int& line, int& col) {
  line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < offset && i < text.size(); ++i)
    if (text[i] == '\n') ++line, line_start = i + 1;
  col = int(offset - line_start) + 1;
}

std::string normalize_source(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

namespace {

[[noreturn]] void fail_at(const std::string& src, size_t offset, const std::string& msg) {
  int line = 0, col = 0;
  line_col(src, offset, line, col);
  throw TemplateError(line, col, msg);
}

bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_name_char(char c) {
  return is_name_start(c) || (c >= '0' && c <= '9');
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_tag_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The value of a string literal's body, with Python's backslash escapes decoded.
std::string decode_escapes(const std::string& src, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) {
    if (src[i] != '\\' || i + 1 >= end) {
      out += src[i];
      continue;
    }
    const char e = src[++i];
    switch (e) {
      case '\n':  // line continuation
        continue;
      case '\\':
        out += '\\';
        continue;
      case '\'':
        out += '\'';
        continue;
      case '"':
        out += '"';
        continue;
      case 'a':
        out += '\a';
        continue;
      case 'b':
        out += '\b';
        continue;
      case 'f':
        out += '\f';
        continue;
      case 'n':
        out += '\n';
        continue;
      case 'r':
        out += '\r';
        continue;
      case 't':
        out += '\t';
        continue;
      case 'v':
        out += '\v';
        continue;
      default:
        break;
    }
    if (e >= '0' && e <= '7') {
      unsigned v = 0;
      size_t n = 0;
      while (n < 3 && i < end && src[i] >= '0' && src[i] <= '7')
        v = v * 8 + unsigned(src[i++] - '0'), ++n;
      --i;
      utf8::append(out, char32_t(v));
      continue;
    }
    const int digits = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
    if (digits == 0) {  // unknown escape: kept as written
      out += '\\';
      out += e;
      continue;
    }
    uint32_t v = 0;
    for (int k = 0; k < digits; ++k) {
      const size_t at = i + 1 + size_t(k);
      const int h = at < end ? hex_value(src[at]) : -1;
      if (h < 0) fail_at(src, i - 1, "truncated \\" + std::string(1, e) + " escape in a string");
      v = v * 16 + uint32_t(h);
    }
    i += size_t(digits);
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
      fail_at(src, i, "escape is not a Unicode scalar value");
    utf8::append(out, char32_t(v));
  }
  return out;
}

// "{{", "{%" or "{#" at or after pos, else npos.
size_t next_tag(const std::string& src, size_t pos) {
  for (size_t p = src.find('{', pos); p != std::string::npos; p = src.find('{', p + 1))
    if (p + 1 < src.size() && (src[p + 1] == '{' || src[p + 1] == '%' || src[p + 1] == '#'))
      return p;
  return std::string::npos;
}

std::string lstrip_all(const std::string& s) {
  return pystr::strip(s, std::nullopt, true, false);
}
std::string rstrip_all(const std::string& s) {
  return pystr::strip(s, std::nullopt, false, true);
}

// If a `{% raw %}` tag starts at p (its content at q), the offset after it, else npos.
size_t raw_tag_end(const std::string& src, size_t q, bool& dash) {
  size_t i = q;
  while (i < src.size() && is_tag_space(src[i])) ++i;
  if (src.compare(i, 3, "raw") != 0 || (i + 3 < src.size() && is_name_char(src[i + 3])))
    return std::string::npos;
  i += 3;
  while (i < src.size() && is_tag_space(src[i])) ++i;
  dash = i < src.size() && src[i] == '-';
  if (dash) ++i;
  if (src.compare(i, 2, "%}") != 0) return std::string::npos;
  return i + 2;
}

class Lexer {
 public:
  explicit Lexer(const std::string& src) : src_(src) {}

  std::vector<Token> run() {
    size_t pos = 0;
    while (true) {
      const size_t p = next_tag(src_, pos);
      std::string text = src_.substr(pos, p == std::string::npos ? std::string::npos : p - pos);
      bool line_start = line_start_;
      if (trim_newline_ && !text.empty() && text[0] == '\n') {
        text.erase(0, 1);
        line_start = true;
      }
      if (lstrip_next_) text = lstrip_all(text);
      trim_newline_ = lstrip_next_ = line_start_ = false;
      if (p == std::string::npos) {
        emit_text(text, pos);
        break;
      }
      const char kind = src_[p + 1];
      const char mod = p + 2 < src_.size() ? src_[p + 2] : '\0';
      if (mod == '-') {
        text = rstrip_all(text);
      } else if ((kind == '%' || kind == '#') && mod != '+') {  // lstrip_blocks
        const size_t nl = text.rfind('\n');
        const size_t l = nl == std::string::npos ? 0 : nl + 1;
        bool blank = true;
        for (size_t i = l; i < text.size() && blank; ++i)
          blank = text[i] == ' ' || text[i] == '\t' || text[i] == '\f' || text[i] == '\v';
        if ((l > 0 || line_start) && blank) text.resize(l);
      }
      emit_text(text, pos);
      const size_t q = p + 2 + (mod == '-' || mod == '+' ? 1 : 0);
      if (kind == '#') {
        pos = comment(p, q);
      } else if (bool dash = false;
                 kind == '%' && raw_tag_end(src_, q, dash) != std::string::npos) {
        pos = raw(p, raw_tag_end(src_, q, dash), dash);
      } else {
        pos = tag(p, q, kind == '%');
      }
    }
    out_.push_back({Tok::Eof, "", src_.size()});
    return std::move(out_);
  }

 private:
  void emit_text(const std::string& text, size_t offset) {
    if (!text.empty()) out_.push_back({Tok::Text, text, offset});
  }

  size_t comment(size_t p, size_t q) {
    const size_t end = src_.find("#}", q);
    if (end == std::string::npos) fail_at(src_, p, "comment not closed (missing '#}')");
    const bool dash = end > q && src_[end - 1] == '-';
    lstrip_next_ = dash;
    trim_newline_ = !dash;
    return end + 2;
  }

  size_t raw(size_t p, size_t body, bool dash) {
    for (size_t s = src_.find("{%", body); s != std::string::npos; s = src_.find("{%", s + 2)) {
      size_t i = s + 2;
      const bool open_dash = i < src_.size() && src_[i] == '-';
      if (open_dash || (i < src_.size() && src_[i] == '+')) ++i;
      while (i < src_.size() && is_tag_space(src_[i])) ++i;
      if (src_.compare(i, 6, "endraw") != 0) continue;
      i += 6;
      while (i < src_.size() && is_tag_space(src_[i])) ++i;
      const bool close_dash = i < src_.size() && src_[i] == '-';
      if (close_dash) ++i;
      if (src_.compare(i, 2, "%}") != 0) continue;
      std::string text = src_.substr(body, s - body);
      if (dash) text = lstrip_all(text);
      if (open_dash) text = rstrip_all(text);
      emit_text(text, body);
      lstrip_next_ = close_dash;
      trim_newline_ = !close_dash;
      return i + 2;
    }
    fail_at(src_, p, "raw block not closed (missing '{% endraw %}')");
  }

  // The tokens of a {{ }} or {% %} tag whose content starts at q; returns the offset after it.
  size_t tag(size_t p, size_t q, bool block) {
    out_.push_back({block ? Tok::BlockBegin : Tok::VarBegin, "", p});
    int depth = 0;
    size_t i = q;
    while (true) {
      while (i < src_.size() && is_tag_space(src_[i])) ++i;
      if (i >= src_.size())
        fail_at(src_, p, std::string("tag not closed (missing '") + (block ? "%}" : "}}") + "')");
      if (depth == 0) {
        const char* end = block ? "%}" : "}}";
        const char m = src_[i];
        const bool modified = (m == '-' || (block && m == '+')) && src_.compare(i + 1, 2, end) == 0;
        if (modified || src_.compare(i, 2, end) == 0) {
          out_.push_back({block ? Tok::BlockEnd : Tok::VarEnd, "", i});
          lstrip_next_ = modified && m == '-';
          trim_newline_ = block && !modified;
          return i + (modified ? 3 : 2);
        }
      }
      i = token(i, depth);
    }
  }

  // One token inside a tag at src_[i]; returns the offset after it.
  size_t token(size_t i, int& depth) {
    const char c = src_[i];
    if (is_name_start(c)) {
      size_t e = i;
      while (e < src_.size() && is_name_char(src_[e])) ++e;
      out_.push_back({Tok::Name, src_.substr(i, e - i), i});
      return e;
    }
    if (is_digit(c)) return number(i);
    if (c == '\'' || c == '"') {
      size_t e = i + 1;
      while (e < src_.size() && src_[e] != c) e += src_[e] == '\\' ? 2 : 1;
      if (e >= src_.size()) fail_at(src_, i, "string not closed");
      out_.push_back({Tok::String, decode_escapes(src_, i + 1, e), i});
      return e + 1;
    }
    static const char* const kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : kTwo)
      if (src_.compare(i, 2, op) == 0) {
        out_.push_back({Tok::Operator, op, i});
        return i + 2;
      }
    if (std::strchr("+-*/%~<>=()[]{}.,:|", c) && c != '\0') {
      if (c == '(' || c == '[' || c == '{') ++depth;
      if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
      out_.push_back({Tok::Operator, std::string(1, c), i});
      return i + 1;
    }
    fail_at(src_, i, "unexpected character '" + printable(src_.substr(i, 1)) + "'");
  }

  size_t number(size_t i) {
    auto digits = [&](size_t e) {
      while (e < src_.size() && (is_digit(src_[e]) ||
                                 (src_[e] == '_' && e + 1 < src_.size() && is_digit(src_[e + 1]))))
        ++e;
      return e;
    };
    size_t e = digits(i);
    bool is_float = false;
    if (e + 1 < src_.size() && src_[e] == '.' && is_digit(src_[e + 1])) {
      e = digits(e + 1);
      is_float = true;
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t x = e + 1;
      if (x < src_.size() && (src_[x] == '+' || src_[x] == '-')) ++x;
      if (x < src_.size() && is_digit(src_[x])) {
        e = digits(x);
        is_float = true;
      }
    }
    std::string text;
    for (size_t k = i; k < e; ++k)
      if (src_[k] != '_') text += src_[k];
    out_.push_back({is_float ? Tok::Float : Tok::Integer, text, i});
    return e;
  }

  const std::string& src_;
  std::vector<Token> out_;
  bool lstrip_next_ = false;   // the previous tag ended with '-'
  bool trim_newline_ = false;  // the previous tag was a block or comment (trim_blocks)
  bool line_start_ = true;     // at the start of the template
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) {
  return Lexer(source).run();
}

}  // namespace moeflux::jinja
