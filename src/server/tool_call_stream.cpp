#include "server/tool_call_stream.hpp"

#include <algorithm>

#include "server/output_parser.hpp"

namespace moeflux::server {

namespace {

constexpr std::string_view kFn = "<function=", kFnEnd = "</function>",
                           kParam = "<parameter=", kParamEnd = "</parameter>";

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

std::string dump_json(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

enum class Match { More, No, Yes };

// A cursor over the start of a body, matching the tokens of a call's opening.
struct Reader {
  std::string_view s;
  size_t i = 0;

  void spaces() {
    while (i < s.size() && is_space(s[i])) ++i;
  }
  Match literal(std::string_view t) {
    const size_t n = std::min(t.size(), s.size() - i);
    if (s.substr(i, n) != t.substr(0, n)) return Match::No;
    if (n < t.size()) return Match::More;
    i += n;
    return Match::Yes;
  }
  // A JSON string (escapes decoded) that is not empty.
  Match string(std::string* out) {
    if (i == s.size()) return Match::More;
    if (s[i] != '"') return Match::No;
    size_t j = i + 1;
    for (; j < s.size() && s[j] != '"'; ++j)
      if (s[j] == '\\') ++j;
    if (j >= s.size()) return Match::More;
    const Json v = Json::parse(s.substr(i, j + 1 - i), nullptr, /*allow_exceptions=*/false);
    if (v.is_discarded() || !v.is_string() || v.get<std::string>().empty()) return Match::No;
    *out = v.get<std::string>();
    i = j + 1;
    return Match::Yes;
  }
};

// `{"name": <string>, "arguments": {` at the start of `s`; *args_at: where the `{` of the
// arguments is.
Match json_opening(std::string_view s, std::string* name, size_t* args_at) {
  Reader r{s};
  for (const std::string_view t : {"{", "\"name\"", ":"}) {
    r.spaces();
    if (const Match m = r.literal(t); m != Match::Yes) return m;
  }
  r.spaces();
  if (const Match m = r.string(name); m != Match::Yes) return m;
  for (const std::string_view t : {",", "\"arguments\"", ":", "{"}) {
    r.spaces();
    if (const Match m = r.literal(t); m != Match::Yes) return m;
  }
  *args_at = r.i - 1;
  return Match::Yes;
}

// `<function=NAME>` at the start of `s`; *after: where the text after it starts.
Match xml_opening(std::string_view s, std::string* name, size_t* after) {
  Reader r{s};
  r.spaces();
  if (const Match m = r.literal(kFn); m != Match::Yes) return m;
  const size_t gt = s.find('>', r.i);
  const size_t bad = s.find_first_of("<\n", r.i);
  if (bad < gt) return Match::No;
  if (gt == std::string_view::npos) return Match::More;
  *name = std::string(trim(s.substr(r.i, gt - r.i)));
  if (name->empty()) return Match::No;
  *after = gt + 1;
  return Match::Yes;
}

}  // namespace

void ToolCallStream::begin(Piece& p, std::string name) {
  begun_ = true;
  name_ = name;
  p.begins = true;
  p.name = std::move(name);
}

void ToolCallStream::emit(Piece& p, std::string_view fragment) {
  p.arguments.append(fragment);
  arguments_.append(fragment);
}

void ToolCallStream::decide(Piece& p) {
  std::string name;
  size_t at = 0;
  const std::string_view s = body_;
  const size_t first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return;  // whitespace so far
  const Match m = s[first] == '<' ? xml_opening(s, &name, &at) : json_opening(s, &name, &at);
  if (m == Match::More) return;
  if (m == Match::No) {
    state_ = State::Whole;
    return;
  }
  begin(p, std::move(name));
  pos_ = at;
  xml_ = s[first] == '<';
  state_ = xml_ ? State::XmlParams : State::JsonArgs;
}

void ToolCallStream::scan_json(Piece& p) {
  size_t i = pos_;
  for (; i < body_.size() && state_ == State::JsonArgs; ++i) {
    const char c = body_[i];
    if (in_string_) {
      if (escaped_)
        escaped_ = false;
      else if (c == '\\')
        escaped_ = true;
      else if (c == '"')
        in_string_ = false;
    } else if (c == '"') {
      in_string_ = true;
    } else if (c == '{' || c == '[') {
      ++depth_;
    } else if ((c == '}' || c == ']') && --depth_ == 0) {
      state_ = State::Done;  // the arguments' closing brace
    }
  }
  emit(p, std::string_view(body_).substr(pos_, i - pos_));
  pos_ = i;
}

void ToolCallStream::scan_xml(Piece& p) {
  while (state_ == State::XmlParams) {
    while (pos_ < body_.size() && is_space(body_[pos_])) ++pos_;
    const std::string_view rest = std::string_view(body_).substr(pos_);
    if (rest.empty() || kFnEnd.starts_with(rest) || kParam.starts_with(rest)) return;  // more
    if (rest.starts_with(kFnEnd)) {
      emit(p, params_ ? "}" : "{}");
      closed_ = true;
      state_ = State::Done;
      return;
    }
    if (!rest.starts_with(kParam)) {
      state_ = State::Done;  // not the syntax: the rest is ignored (closed at finish)
      return;
    }
    const size_t gt = rest.find('>');
    if (gt == std::string_view::npos) return;
    const std::string key(trim(rest.substr(kParam.size(), gt - kParam.size())));
    if (key.empty() || key.find_first_of("<\n") != std::string::npos) {
      state_ = State::Done;
      return;
    }
    const size_t end = rest.find(kParamEnd, gt + 1);
    if (end == std::string_view::npos) return;  // the value is typed once it is whole
    std::string_view value = rest.substr(gt + 1, end - gt - 1);
    if (value.starts_with('\n')) value.remove_prefix(1);
    if (value.ends_with('\n')) value.remove_suffix(1);
    emit(p, std::string(params_++ ? "," : "{") + dump_json(Json(key)) + ":" +
                dump_json(xml_parameter_value(value)));
    pos_ += end + kParamEnd.size();
  }
}

ToolCallStream::Piece ToolCallStream::push(std::string_view text) {
  body_.append(text);
  Piece p;
  if (state_ == State::Undecided) decide(p);
  if (state_ == State::JsonArgs) scan_json(p);
  if (state_ == State::XmlParams) scan_xml(p);
  return p;
}

std::optional<ToolCallStream::Piece> ToolCallStream::finish() {
  Piece p;
  if (!begun_) {
    const std::optional<ToolCall> c = parse_tool_call(body_);
    if (!c) return std::nullopt;
    begin(p, c->name);
    emit(p, c->arguments);
    state_ = State::Done;
    return p;
  }
  if (xml_ && !closed_) {
    emit(p, params_ ? "}" : "{}");
    closed_ = true;
  }
  state_ = State::Done;
  return p;
}

}  // namespace moeflux::server
