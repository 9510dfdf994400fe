// The server's view of a chat format: a conversation with tools -> the prompt text.
//
// Two implementations:
//   - the checkpoint's own Jinja template (server/jinja_chat_template.hpp), which writes tools,
//     tool calls and tool results itself, as transformers' apply_chat_template does;
//   - chat_template_from_format() below, over a hand-written format (text/chat_format.hpp) or a
//     template that has no tools of its own: it writes tools the Qwen3 way (the ChatML family's):
//     a system turn that lists the tools' JSON (Python's json.dumps spacing, the client's key
//     order) and asks for
//       <tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>
//     and writes assistant tool calls back in that form.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "server/request.hpp"
#include "text/chat_format.hpp"

namespace moeflux::server {

struct TemplateOptions {
  std::optional<bool> enable_thinking;  // unset: the template's default
  // Leave the last (assistant) message open: the reply continues it.
  bool continue_final_message = false;
};

struct Prompt {
  std::string text;
  // With continue_final_message: the last message's text as `text` ends with it (the reply goes
  // on from there; a template may have trimmed its whitespace), a suffix of `text`. Else empty.
  std::string continued;
};

class ChatTemplate {
 public:
  virtual ~ChatTemplate() = default;
  // What renders the prompts, for the server's start-up line.
  virtual std::string_view name() const = 0;
  // The prompt for `messages` (and the tools' definitions, an array, maybe empty), ending with
  // the assistant turn's opening (or inside the last message with continue_final_message).
  // Throws ApiError(400) for a conversation the template cannot render.
  virtual Prompt render(std::span<const Message> messages, const Json& tools,
                        const TemplateOptions& opts) const = 0;
  // Thinking markers ("<think>", "</think>"), empty when the format has none.
  virtual std::string_view think_open() const = 0;
  virtual std::string_view think_close() const = 0;
};

// A ChatTemplate over a hand-written format.
std::unique_ptr<ChatTemplate> chat_template_from_format(std::unique_ptr<ChatFormat> format);

// Python's json.dumps(v, ensure_ascii=False) (Jinja's tojson in transformers): ", " and ": "
// separators, keys in the object's order.
std::string python_json(const Json& v);

}  // namespace moeflux::server
