#include "server/output_parser.hpp"

#include <algorithm>

namespace moeflux::server {

namespace {

constexpr std::string_view kCallOpen = "<tool_call>";
constexpr std::string_view kCallClose = "</tool_call>";

// Length of the longest suffix of `s` that is a proper prefix of `tag`.
size_t partial_tag(std::string_view s, std::string_view tag) {
  if (tag.empty()) return 0;
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

// Compact JSON; bytes that are not UTF-8 (the model may write them) become U+FFFD.
std::string dump_json(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Qwen3.5 (XML) syntax: <function=NAME> (<parameter=KEY>\nVALUE\n</parameter>)* </function>.
std::optional<ToolCall> parse_xml_call(std::string_view b) {
  constexpr std::string_view kFn = "<function=", kFnEnd = "</function>",
                             kParam = "<parameter=", kParamEnd = "</parameter>";
  if (!b.starts_with(kFn)) return std::nullopt;
  b.remove_prefix(kFn.size());
  const size_t gt = b.find('>');
  if (gt == std::string_view::npos || gt == 0) return std::nullopt;
  ToolCall c;
  c.name = std::string(trim(b.substr(0, gt)));
  b = trim(b.substr(gt + 1));
  if (!b.ends_with(kFnEnd)) return std::nullopt;
  b = trim(b.substr(0, b.size() - kFnEnd.size()));
  Json args = Json::object();
  while (!b.empty()) {
    if (!b.starts_with(kParam)) return std::nullopt;
    b.remove_prefix(kParam.size());
    const size_t k = b.find('>');
    if (k == std::string_view::npos || k == 0) return std::nullopt;
    const std::string key(trim(b.substr(0, k)));
    b.remove_prefix(k + 1);
    const size_t end = b.find(kParamEnd);
    if (end == std::string_view::npos) return std::nullopt;
    std::string_view value = b.substr(0, end);
    if (value.starts_with('\n')) value.remove_prefix(1);
    if (value.ends_with('\n')) value.remove_suffix(1);
    args[key] = xml_parameter_value(value);
    b = trim(b.substr(end + kParamEnd.size()));
  }
  c.arguments = dump_json(args);
  return c;
}

}  // namespace

Json xml_parameter_value(std::string_view value) {
  Json v = Json::parse(value, nullptr, /*allow_exceptions=*/false);
  return v.is_discarded() || v.is_string() ? Json(std::string(value)) : v;
}

std::optional<ToolCall> parse_tool_call(std::string_view body) {
  body = trim(body);
  if (body.starts_with("<function=")) return parse_xml_call(body);
  const Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  auto name = j.find("name");
  if (name == j.end() || !name->is_string() || name->get<std::string>().empty())
    return std::nullopt;
  ToolCall c;
  c.name = name->get<std::string>();
  auto args = j.find("arguments");
  if (args == j.end() || args->is_null())
    c.arguments = "{}";
  else if (args->is_string())
    c.arguments = args->get<std::string>();
  else
    c.arguments = dump_json(*args);
  return c;
}

OutputParser::OutputParser(std::string think_open, std::string think_close, bool parse_tools,
                           bool starts_in_reasoning)
    : open_(std::move(think_open)),
      close_(std::move(think_close)),
      tools_(parse_tools),
      mode_(starts_in_reasoning && !close_.empty() ? Mode::Reasoning : Mode::Content),
      at_reasoning_start_(mode_ == Mode::Reasoning),
      at_content_start_(false) {}

void OutputParser::emit_content(ParsedDelta& d, std::string_view s) {
  if (at_content_start_) {
    while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
    if (s.empty()) return;
    at_content_start_ = false;
  }
  // Trailing newlines wait: they are dropped if a tool call or the end follows.
  size_t keep = s.size();
  while (keep > 0 && s[keep - 1] == '\n') --keep;
  if (keep > 0) {
    d.content += pending_nl_;
    pending_nl_.clear();
    d.content.append(s.substr(0, keep));
  }
  pending_nl_.append(s.substr(keep));
}

void OutputParser::take(ParsedDelta& d, const ToolCallStream::Piece& p) {
  if (p.empty()) return;
  if (p.begins) {
    ++calls_;
    pending_nl_.clear();  // a call follows: the newlines before it are the format's
  }
  d.tool_call_deltas.push_back({calls_ - 1, p.name, p.arguments});
}

void OutputParser::end_call(ParsedDelta& d, bool closed) {
  const std::optional<ToolCallStream::Piece> last = call_.finish();
  if (!last) {
    // No call: its text is content, verbatim.
    emit_content(d, std::string(kCallOpen) + call_.body() +
                        (closed ? std::string(kCallClose) : std::string()));
    return;
  }
  take(d, *last);
  d.tool_calls.push_back({"", call_.name(), call_.arguments()});
}

ParsedDelta OutputParser::push(std::string_view text) {
  buf_ += text;
  ParsedDelta d;
  run(d, false);
  return d;
}

ParsedDelta OutputParser::finish() {
  ParsedDelta d;
  run(d, true);
  pending_nl_.clear();
  return d;
}

void OutputParser::run(ParsedDelta& d, bool final) {
  for (;;) {
    if (mode_ == Mode::Reasoning) {
      if (at_reasoning_start_) {
        if (buf_.empty()) return;
        if (buf_.front() == '\n') buf_.erase(0, 1);
        at_reasoning_start_ = false;
      }
      const size_t at = buf_.find(close_);
      if (at != std::string::npos) {
        std::string_view r(buf_.data(), at);
        while (!r.empty() && r.back() == '\n') r.remove_suffix(1);
        d.reasoning.append(r);
        buf_.erase(0, at + close_.size());
        mode_ = Mode::Content;
        at_content_start_ = true;
        continue;
      }
      // Hold newlines at the end (they may precede </think>) and a partial </think>.
      size_t keep = final ? 0 : partial_tag(buf_, close_);
      if (!final)
        while (keep < buf_.size() && buf_[buf_.size() - keep - 1] == '\n') ++keep;
      d.reasoning.append(buf_, 0, buf_.size() - keep);
      buf_.erase(0, buf_.size() - keep);
      if (final) buf_.clear();
      return;
    }
    if (mode_ == Mode::ToolCall) {
      const size_t at = buf_.find(kCallClose);
      if (at == std::string::npos && !final) {
        // The body so far, but a partial </tool_call> at the end.
        const size_t n = buf_.size() - partial_tag(buf_, kCallClose);
        take(d, call_.push(std::string_view(buf_).substr(0, n)));
        buf_.erase(0, n);
        return;
      }
      take(d, call_.push(std::string_view(buf_).substr(0, at)));
      buf_.erase(0, at == std::string::npos ? buf_.size() : at + kCallClose.size());
      end_call(d, at != std::string::npos);
      mode_ = Mode::Content;
      at_content_start_ = true;
      if (buf_.empty()) return;
      continue;
    }
    // Content: the earliest <think> or <tool_call>.
    size_t think = open_.empty() ? std::string::npos : buf_.find(open_);
    size_t call = tools_ ? buf_.find(kCallOpen) : std::string::npos;
    if (think != std::string::npos && (call == std::string::npos || think < call)) {
      emit_content(d, std::string_view(buf_).substr(0, think));
      buf_.erase(0, think + open_.size());
      mode_ = Mode::Reasoning;
      at_reasoning_start_ = true;
      continue;
    }
    if (call != std::string::npos) {
      emit_content(d, std::string_view(buf_).substr(0, call));
      pending_nl_.clear();  // the newline before a tool call is the format's
      buf_.erase(0, call + kCallOpen.size());
      mode_ = Mode::ToolCall;
      call_ = ToolCallStream();
      continue;
    }
    const size_t keep =
        final ? 0 : std::max(partial_tag(buf_, open_), tools_ ? partial_tag(buf_, kCallOpen) : 0);
    emit_content(d, std::string_view(buf_).substr(0, buf_.size() - keep));
    buf_.erase(0, buf_.size() - keep);
    return;
  }
}

}  // namespace moeflux::server
