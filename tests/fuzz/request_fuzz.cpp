// libFuzzer target: the server's handling of untrusted request bodies and model output.
//
// The first byte picks the entry point: chat request, completion request, or reply text for the
// output parser (fed in pieces whose sizes the input's bytes choose). A request either parses
// (and then renders, with its tools, through the hand-written qwen3 format and through the
// published Qwen3.5 Jinja template) or throws ApiError with a 4xx status and a one-line message;
// the output parser never throws, never returns more text (reasoning, content, tool names) than
// it was given, and the streamed pieces of every tool call make the call: one named first piece,
// the fragments concatenated equal to its arguments. Anything else (crash, sanitizer report,
// another exception, an assertion) is a finding.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "server/api_error.hpp"
#include "server/chat_template.hpp"
#include "server/jinja_chat_template.hpp"
#include "server/output_parser.hpp"
#include "server/request.hpp"

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "request_fuzz: %s\n", what.c_str());
  std::abort();
}

std::unique_ptr<moeflux::server::ChatTemplate> qwen3_5_template() {
  std::ifstream in(std::string(MOEFLUX_FIXTURE_DIR) + "/chat/qwen3_5.jinja");
  std::stringstream text;
  text << in.rdbuf();
  moeflux::ChatTemplates t;
  t.named.emplace_back("default", text.str());
  return moeflux::server::chat_template_from_jinja(t, {}, nullptr);
}

void request(std::string_view body, bool chat) {
  using namespace moeflux::server;
  static const auto tmpl = chat_template_from_format(moeflux::chat_format_by_name("qwen3"));
  static const auto jinja = qwen3_5_template();
  try {
    const GenerationRequest r = chat ? parse_chat_request(body, RequestLimits{})
                                     : parse_completion_request(body, RequestLimits{});
    if (r.max_tokens < 1 || r.max_tokens > RequestLimits{}.max_tokens)
      finding("max_tokens out of range");
    if (chat) {
      TemplateOptions o;
      o.enable_thinking = r.enable_thinking;
      o.continue_final_message = r.continue_final_message;
      (void)tmpl->render(r.messages, r.tools, o).text;
      try {
        const Prompt p = jinja->render(r.messages, r.tools, o);
        if (!p.text.ends_with(p.continued)) finding("the continued text does not end the prompt");
      } catch (const ApiError& e) {
        if (e.status() != 400) finding("template status " + std::to_string(e.status()));
      }
    }
  } catch (const ApiError& e) {
    if (e.status() < 400 || e.status() >= 500) finding("status " + std::to_string(e.status()));
    if (std::string(e.what()).find('\n') != std::string::npos) finding("a multi-line message");
  }
}

void reply(const uint8_t* data, size_t n) {
  using namespace moeflux::server;
  if (n < 2) return;
  OutputParser p("<think>", "</think>", data[0] & 1, data[0] & 2);
  const std::string text(reinterpret_cast<const char*>(data + 1), n - 1);
  size_t out = 0;
  std::vector<ToolCall> calls;
  std::vector<ToolCallDelta> pieces;
  auto count = [&](const ParsedDelta& d) {
    out += d.reasoning.size() + d.content.size();
    for (const auto& c : d.tool_calls) out += c.name.size();
    calls.insert(calls.end(), d.tool_calls.begin(), d.tool_calls.end());
    pieces.insert(pieces.end(), d.tool_call_deltas.begin(), d.tool_call_deltas.end());
  };
  for (size_t i = 0, step = 1; i < text.size(); i += step, step = 1 + (text[i - step] & 7))
    count(p.push(std::string_view(text).substr(i, std::min(step, text.size() - i))));
  count(p.finish());
  if (out > text.size()) finding("the parser produced more text than it was given");
  // Every call that began ended; its pieces make it.
  std::vector<std::string> names(calls.size()), args(calls.size());
  std::vector<size_t> seen(calls.size());
  for (const ToolCallDelta& t : pieces) {
    if (t.index >= calls.size()) finding("a piece of a call that did not end");
    if ((seen[t.index]++ == 0) != !t.name.empty()) finding("a call's name not on its first piece");
    names[t.index] += t.name;
    args[t.index] += t.arguments;
  }
  for (size_t i = 0; i < calls.size(); ++i)
    if (seen[i] == 0 || names[i] != calls[i].name || args[i] != calls[i].arguments)
      finding("the pieces of a call do not make it");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 3) {
    case 0:
      request(body, true);
      break;
    case 1:
      request(body, false);
      break;
    default:
      reply(data + 1, size - 1);
  }
  return 0;
}
