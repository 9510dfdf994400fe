// libFuzzer target: the server's handling of untrusted request bodies and model output.
//
// The first byte picks the entry point: chat request, completion request, or reply text for the
// output parser (fed in pieces whose sizes the input's bytes choose). A request either parses
// (and then renders, with its tools, through the qwen3 chat template) or throws ApiError with a
// 4xx status and a one-line message; the output parser never throws and never returns more text
// (reasoning, content, tool names) than it was given. Anything else (crash,
// sanitizer report, another exception, an assertion) is a finding.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "server/api_error.hpp"
#include "server/chat_template.hpp"
#include "server/output_parser.hpp"
#include "server/request.hpp"

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "request_fuzz: %s\n", what.c_str());
  std::abort();
}

void request(std::string_view body, bool chat) {
  using namespace moeflux::server;
  static const auto tmpl = chat_template_from_format(moeflux::chat_format_by_name("qwen3"));
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
  auto count = [&](const ParsedDelta& d) {
    out += d.reasoning.size() + d.content.size();
    for (const auto& c : d.tool_calls) out += c.name.size();
  };
  for (size_t i = 0, step = 1; i < text.size(); i += step, step = 1 + (text[i - step] & 7))
    count(p.push(std::string_view(text).substr(i, std::min(step, text.size() - i))));
  count(p.finish());
  if (out > text.size()) finding("the parser produced more text than it was given");
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
