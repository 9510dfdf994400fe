#include "server/jinja_chat_template.hpp"

#include <optional>

#include "server/api_error.hpp"
#include "server/final_message.hpp"

namespace moeflux::server {

namespace {

// How a template takes an assistant's tool calls (see the header).
struct ToolCallShape {
  bool arguments_as_object = true;  // else the JSON text
  bool null_content = false;        // content of a turn of tool calls only: null, else ""
};

// The messages as the template receives them.
Json template_messages(std::span<const Message> messages, const ToolCallShape& shape) {
  Json out = Json::array();
  for (const Message& m : messages) {
    Json j = {{"role", m.role}, {"content", m.content}};
    if (m.role == "assistant" && m.content.empty() && !m.tool_calls.empty() && shape.null_content)
      j["content"] = nullptr;
    if (m.reasoning_content) j["reasoning_content"] = *m.reasoning_content;
    if (!m.tool_calls.empty()) {
      Json calls = Json::array();
      for (const ToolCall& c : m.tool_calls) {
        Json args = c.arguments;
        if (shape.arguments_as_object) {
          Json parsed = Json::parse(c.arguments, nullptr, /*allow_exceptions=*/false);
          if (!parsed.is_discarded() && parsed.is_object()) args = std::move(parsed);
        }
        Json call;
        if (!c.id.empty()) call["id"] = c.id;
        call["type"] = "function";
        call["function"] = {{"name", c.name}, {"arguments", std::move(args)}};
        calls.push_back(std::move(call));
      }
      j["tool_calls"] = std::move(calls);
    }
    if (!m.tool_call_id.empty()) j["tool_call_id"] = m.tool_call_id;
    out.push_back(std::move(j));
  }
  return out;
}

// The probe: names and a value that no template writes by itself.
constexpr std::string_view kProbeTool = "moeflux_probe_tool";
constexpr std::string_view kProbeCall = "moeflux_probe_call";
constexpr std::string_view kProbeValue = "moeflux_probe_value";

Json probe_tools() {
  return Json::parse(R"([{"type": "function", "function": {"name": ")" + std::string(kProbeTool) +
                     R"(", "description": "probe", "parameters": {"type": "object",
                     "properties": {"q": {"type": "string"}}, "required": ["q"]}}}])");
}

// The rendering of `messages` with the probe tools, or nullopt when the template fails.
std::optional<std::string> try_render(const moeflux::ChatTemplate& t, const Json& messages,
                                      const ChatRenderOptions& base) {
  try {
    return t.render(messages, probe_tools(), base);
  } catch (const Error&) {
    return std::nullopt;
  }
}

// Whether the template lists the tools it is given.
bool writes_tools(const moeflux::ChatTemplate& t, const ChatRenderOptions& base) {
  const Json messages = Json::parse(R"([{"role": "user", "content": "Hi"}])");
  const auto text = try_render(t, messages, base);
  return text && text->find(kProbeTool) != std::string::npos;
}

// The first shape of a tool call the template writes (its name and argument appear), or nullopt
// when it writes none.
std::optional<ToolCallShape> tool_call_shape(const moeflux::ChatTemplate& t,
                                             const ChatRenderOptions& base) {
  std::vector<Message> m(3);
  m[0] = {"user", "Hi", {}, {}, {}};
  m[1] = {
      "assistant",
      "",
      {},
      {{"call_probe", std::string(kProbeCall), "{\"q\": \"" + std::string(kProbeValue) + "\"}"}},
      {}};
  m[2] = {"tool", "done", {}, {}, "call_probe"};
  for (const bool as_object : {true, false})
    for (const bool null_content : {false, true}) {
      const ToolCallShape shape{as_object, null_content};
      const auto text = try_render(t, template_messages(m, shape), base);
      if (text && text->find(kProbeCall) != std::string::npos &&
          text->find(kProbeValue) != std::string::npos)
        return shape;
    }
  return std::nullopt;
}

class JinjaTemplate : public ChatTemplate {
 public:
  JinjaTemplate(const ChatTemplates& templates, ChatRenderOptions base,
                std::unique_ptr<ChatTemplate> fallback)
      : base_(std::move(base)), fallback_(std::move(fallback)) {
    const std::string* plain = templates.select(/*with_tools=*/false);
    const std::string* tools = templates.select(/*with_tools=*/true);
    if (!plain || !tools) fail("the package has no usable chat template");
    plain_ = moeflux::ChatTemplate::parse(*plain);
    if (tools != plain) tool_use_ = moeflux::ChatTemplate::parse(*tools);
    const moeflux::ChatTemplate& t = tool_use_ ? *tool_use_ : plain_;
    if (writes_tools(t, base_)) shape_ = tool_call_shape(t, base_);
    thinking_ = plain_.has_thinking() || t.has_thinking();
    name_ = "the package's Jinja template";
    if (!shape_)
      name_ += fallback_ ? " (it writes no tool calls: tools in the hand-written Qwen3 format)"
                         : " (it writes no tool calls: requests with tools are refused)";
  }

  std::string_view name() const override { return name_; }
  std::string_view think_open() const override { return thinking_ ? "<think>" : ""; }
  std::string_view think_close() const override { return thinking_ ? "</think>" : ""; }

  Prompt render(std::span<const Message> messages, const Json& tools,
                const TemplateOptions& opts) const override {
    bool tool_calls = false;
    for (const Message& m : messages) tool_calls |= !m.tool_calls.empty();
    if (!shape_ && (!tools.empty() || tool_calls)) {
      if (fallback_) return fallback_->render(messages, tools, opts);
      throw ApiError(400, "the model's chat template does not write tools and tool calls",
                     tools.empty() ? "messages" : "tools");
    }
    const moeflux::ChatTemplate& t = !tools.empty() && tool_use_ ? *tool_use_ : plain_;
    ChatRenderOptions o = base_;
    o.add_generation_prompt = !opts.continue_final_message;
    o.enable_thinking = opts.enable_thinking;
    std::string text;
    try {
      text = t.render(template_messages(messages, shape_.value_or(ToolCallShape{})),
                      tools.empty() ? Json() : tools, o);
    } catch (const Error& e) {
      throw ApiError(400, std::string("the chat template refused the conversation: ") + e.what(),
                     "messages");
    }
    if (!opts.continue_final_message) return {std::move(text), ""};
    if (messages.empty() || messages.back().role != "assistant")
      throw ApiError(400, "continue_final_message: the last message must be an assistant message",
                     "continue_final_message");
    return cut_after_final_message(std::move(text), messages.back().content);
  }

 private:
  moeflux::ChatTemplate plain_;
  std::optional<moeflux::ChatTemplate> tool_use_;  // the "tool_use" template, if a separate one
  ChatRenderOptions base_;
  std::unique_ptr<ChatTemplate> fallback_;
  std::optional<ToolCallShape> shape_;  // unset: the template writes no tools
  bool thinking_ = false;
  std::string name_;
};

}  // namespace

std::unique_ptr<ChatTemplate> chat_template_from_jinja(
    const ChatTemplates& templates, ChatRenderOptions base,
    std::unique_ptr<ChatTemplate> tools_fallback) {
  return std::make_unique<JinjaTemplate>(templates, std::move(base), std::move(tools_fallback));
}

}  // namespace moeflux::server
