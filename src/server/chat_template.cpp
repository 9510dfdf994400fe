#include "server/chat_template.hpp"

#include "server/api_error.hpp"

namespace moeflux::server {

std::string python_json(const Json& v) {
  if (v.is_object()) {
    std::string s = "{";
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!first) s += ", ";
      first = false;
      s += Json(it.key()).dump(-1, ' ', false, Json::error_handler_t::replace);
      s += ": " + python_json(it.value());
    }
    return s + "}";
  }
  if (v.is_array()) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + python_json(v[i]);
    return s + "]";
  }
  return v.dump(-1, ' ', false, Json::error_handler_t::replace);
}

namespace {

constexpr std::string_view kToolsIntro =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\n<tools>";
constexpr std::string_view kToolsOutro =
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\n</tool_call>";

// An assistant message's content with its tool calls written after it (Qwen3's template).
std::string with_tool_calls(const Message& m) {
  std::string out = m.content;
  for (size_t i = 0; i < m.tool_calls.size(); ++i) {
    if (i > 0 || !m.content.empty()) out += "\n";
    out += "<tool_call>\n{\"name\": \"" + m.tool_calls[i].name +
           "\", \"arguments\": " + m.tool_calls[i].arguments + "}\n</tool_call>";
  }
  return out;
}

class FormatTemplate : public ChatTemplate {
 public:
  explicit FormatTemplate(std::unique_ptr<ChatFormat> f)
      : f_(std::move(f)),
        name_("the " + std::string(f_->name()) + " format, tools written the Qwen3 way") {}
  std::string_view name() const override { return name_; }
  std::string_view think_open() const override { return f_->think_open(); }
  std::string_view think_close() const override { return f_->think_close(); }

  Prompt render(std::span<const Message> messages, const Json& tools,
                const TemplateOptions& opts) const override {
    std::vector<ChatMessage> cm;
    size_t first = 0;
    if (!tools.empty()) {
      std::string system;
      if (!messages.empty() && messages[0].role == "system") {
        system = messages[0].content + "\n\n";
        first = 1;
      }
      system += kToolsIntro;
      for (const Json& t : tools) system += "\n" + python_json(t);
      system += kToolsOutro;
      cm.push_back({"system", system, {}});
    }
    for (size_t i = first; i < messages.size(); ++i) {
      const Message& m = messages[i];
      cm.push_back(
          {m.role, m.role == "assistant" ? with_tool_calls(m) : m.content, m.reasoning_content});
    }
    ChatOptions co;
    co.enable_thinking = opts.enable_thinking;
    if (!opts.continue_final_message) return {f_->render(cm, co), ""};
    // The conversation before the last message, the assistant turn opened, then its content (as
    // transformers cuts a rendering right after the final message's content: tool calls written
    // after it are left out).
    if (cm.empty() || cm.back().role != "assistant")
      throw ApiError(400, "continue_final_message: the last message must be an assistant message",
                     "continue_final_message");
    cm.pop_back();
    const std::string& last = messages.back().content;
    return {f_->render(cm, co) + last, last};
  }

 private:
  std::unique_ptr<ChatFormat> f_;
  std::string name_;
};

}  // namespace

std::unique_ptr<ChatTemplate> chat_template_from_format(std::unique_ptr<ChatFormat> format) {
  return std::make_unique<FormatTemplate>(std::move(format));
}

}  // namespace moeflux::server
