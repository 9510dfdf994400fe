// libFuzzer target: the Jinja interpreter on arbitrary chat templates.
//
// The input is a template. It must either fail to parse with a one-line jinja::TemplateError,
// or parse; a parsed template then renders a fixed set of conversations (system, multi-turn,
// tool calls and results, thinking on and off, content parts, odd values) under small limits,
// each either rendering or failing with a one-line TemplateError. Anything else (crash,
// sanitizer report, hang beyond the limits, another exception, a multi-line message) is a
// finding.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "text/jinja/template.hpp"

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "chat_template_fuzz: %s\n", what.c_str());
  std::abort();
}

using ojson = nlohmann::ordered_json;

const std::vector<ojson>& contexts() {
  static const std::vector<ojson> c = [] {
    const ojson tools = ojson::parse(R"([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather", "parameters": {"type": "object", "properties": {"city":
        {"type": "string"}}, "required": ["city"]}}}])");
    const ojson plain = ojson::parse(R"([{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello"},
        {"role": "user", "content": "<tool_response>x</tool_response>"}])");
    const ojson calls = ojson::parse(R"([{"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "reasoning_content": "need tool", "tool_calls": [
          {"id": "c1", "type": "function", "function": {"name": "get_weather",
           "arguments": {"city": "Paris", "n": [1, 2.5, null, true]}}}]},
        {"role": "tool", "content": "{\"t\": 21}", "tool_call_id": "c1"},
        {"role": "assistant", "content": null}])");
    const ojson parts = ojson::parse(R"([{"role": "user", "content": [{"type": "text",
        "text": "a"}, {"type": "image"}]}, {"role": "weird", "content": 7}])");
    return std::vector<ojson>{
        {{"messages", plain}, {"tools", nullptr}, {"add_generation_prompt", true}},
        {{"messages", calls},
         {"tools", tools},
         {"add_generation_prompt", false},
         {"enable_thinking", false},
         {"bos_token", "<s>"}},
        {{"messages", parts},
         {"tools", ojson::array()},
         {"add_generation_prompt", true},
         {"enable_thinking", true}},
        {{"messages", ojson::array()}},
    };
  }();
  return c;
}

void check_message(const moeflux::jinja::TemplateError& e) {
  const std::string what = e.what();
  if (what.find('\n') != std::string::npos) finding("multi-line error: " + what);
  if (what.rfind("chat template:", 0) != 0) finding("error without position: " + what);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  moeflux::jinja::Limits limits;
  limits.max_template_bytes = 64 * 1024;
  limits.max_steps = 200000;
  limits.max_string_bytes = 1 << 20;
  limits.max_total_bytes = 16 << 20;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::optional<moeflux::jinja::Template> t;
  try {
    t = moeflux::jinja::Template::parse(text, limits);
  } catch (const moeflux::jinja::TemplateError& e) {
    check_message(e);
    return 0;
  } catch (const std::exception& e) {
    finding(std::string("parse threw another exception: ") + e.what());
  }
  for (const ojson& vars : contexts()) {
    try {
      const std::string out = t->render(vars);
      if (out.size() > limits.max_string_bytes) finding("output beyond max_string_bytes");
    } catch (const moeflux::jinja::TemplateError& e) {
      check_message(e);
    } catch (const std::exception& e) {
      finding(std::string("render threw another exception: ") + e.what());
    }
  }
  return 0;
}
