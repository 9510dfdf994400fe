// The checkpoint's own Jinja chat template as the server's ChatTemplate: a request's messages and
// tools are handed to the template (text/chat_template.hpp) the way transformers'
// apply_chat_template receives them from an OpenAI-compatible server, so the prompt is the one
// the model was trained on, tools and tool calls included.
//
// What the template sees:
//   messages   [{"role", "content", "reasoning_content"?, "tool_calls"?, "tool_call_id"?}]:
//              assistant tool calls as {"id", "type": "function", "function": {"name",
//              "arguments"}}, tool results as {"role": "tool", "content", "tool_call_id"}
//   tools      the request's tools as given (key order kept), none when there are none
//   add_generation_prompt, enable_thinking (only when the request sets it), and the tokenizer's
//   special tokens (bos_token, eos_token, ...)
//
// Templates disagree on the shape of a tool call, so it is found once, at construction, by
// rendering a probe conversation: arguments as an object (Qwen3, Qwen3.5, GLM-4.5 iterate over
// or tojson them) or as the JSON text (DeepSeek-V3 concatenates them), and the content of a
// turn of tool calls only as "" or null (DeepSeek-V3 takes a non-null content for a plain
// reply). The first shape whose rendering carries the probe call wins. A client's arguments
// that are not a JSON object are passed as the text they are (the template may refuse them).
//
// A template that writes no tools (the probe's tool does not appear; ChatML templates) renders
// requests without tools itself and hands requests with tools or tool calls to `tools_fallback`
// (the hand-written Qwen3 tool format over the same template), or refuses them (400) without
// one.
//
// continue_final_message as transformers implements it: render without the generation prompt,
// then cut the text right after the final message's content (server/final_message.hpp).
// A template's raise_exception (or any failure while rendering) is a 400 with its message.
#pragma once

#include <memory>
#include <string_view>

#include "server/chat_template.hpp"
#include "text/chat_template.hpp"

namespace moeflux::server {

// Throws moeflux::Error (jinja::TemplateError) when a template does not parse, and when
// `templates` is empty.
std::unique_ptr<ChatTemplate> chat_template_from_jinja(
    const ChatTemplates& templates, ChatRenderOptions base,
    std::unique_ptr<ChatTemplate> tools_fallback);

}  // namespace moeflux::server
