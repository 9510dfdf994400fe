// Chat formatting: a conversation (role, content) -> the prompt text the model was trained on.
//
// A package with a chat template renders it (text/chat_template.hpp: the checkpoint's own Jinja
// template, make_template_chat_format()); the hand-written formats below are the fallback for
// packages without one, and the reference the template renderer was first checked against.
//
// Each format is a C++ rendering of one family of Jinja chat templates, character for character
// (tests/chat_format_test.cpp compares with transformers' apply_chat_template on the fixtures of
// tests/fixtures/chat/). Formats today:
//
//   chatml  plain ChatML (the bundled model):
//             for each message: <|im_start|>{role}\n{content}<|im_end|>\n
//             generation prompt: <|im_start|>assistant\n
//   qwen3   ChatML with Qwen3's hybrid thinking blocks (the Qwen3 template, without tools):
//             - a leading system message, user messages, later system messages: as chatml;
//             - assistant reasoning is `reasoning_content`, else the text before the first
//               </think> (after the last <think> in it), and the content is the text after the
//               last </think>; assistant turns up to the last real user query are rendered with
//               the content only (reasoning dropped); later turns (the current agentic turn) as
//               <think>\n{reasoning}\n</think>\n\n{content} when they are the last message or
//               carry reasoning;
//             - consecutive `tool` messages are one user turn of <tool_response> blocks;
//             - enable_thinking == false appends <think>\n\n</think>\n\n to the generation
//               prompt (an empty thought: the model answers directly).
//
// Templates are recognised strictly (chat_format_registry()): one that no entry recognises is an
// error, never rendered approximately. Not recognised today: templates whose generation prompt
// always opens <think> (Qwen3.5, QwQ, Qwen3 Thinking-2507).
//
// Extension point: a new family (DeepSeek-V3's <｜User｜>/<｜Assistant｜> format comes with that
// model family) adds a ChatFormat subclass and one entry in chat_format_registry() (name, a
// recogniser of its Jinja template text, a factory); nothing else changes.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moeflux {

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant" | "tool"
  std::string content;
  // Assistant reasoning given apart from the content (as transformers' `reasoning_content`);
  // unset: any <think>...</think> in the content is the reasoning.
  std::optional<std::string> reasoning_content;
};

struct ChatOptions {
  bool add_generation_prompt = true;  // end with the assistant's turn opening
  // Unset = the template's default (the variable undefined); qwen3 thinks unless false.
  std::optional<bool> enable_thinking;
};

class ChatFormat {
 public:
  virtual ~ChatFormat() = default;
  virtual std::string_view name() const = 0;

  // The whole conversation, as the family's template renders it.
  virtual std::string render(std::span<const ChatMessage> messages,
                             const ChatOptions& opts) const = 0;

  // Append-only continuation for a session that keeps its state across turns: the text of new
  // `messages` (user / system / tool turns) that follow an assistant reply, plus the generation
  // prompt. `reply_closed` says whether the model's end-of-turn text (end_of_turn()) was
  // already evaluated after the reply; if not, it is prepended. Earlier turns are not re-rendered
  // (the model keeps the reply as it generated it, reasoning included).
  virtual std::string continue_after_reply(std::span<const ChatMessage> messages,
                                           const ChatOptions& opts, bool reply_closed) const = 0;

  // The text that ends a turn ("<|im_end|>\n" for ChatML) and the token the model emits to end
  // its reply ("<|im_end|>"): generation stops there.
  virtual std::string_view end_of_turn() const = 0;
  virtual std::string_view end_of_turn_token() const = 0;

  // Thinking markers ("<think>", "</think>"), empty when the format has none.
  virtual std::string_view think_open() const { return {}; }
  virtual std::string_view think_close() const { return {}; }
};

struct ChatFormatEntry {
  std::string_view name;
  // Whether a Jinja chat template (tokenizer_config.json "chat_template" or chat_template.jinja)
  // is this format's. Entries are tried in order; the first match wins.
  bool (*recognises)(std::string_view template_text);
  std::unique_ptr<ChatFormat> (*make)();
};

// Known formats, most specific first.
std::span<const ChatFormatEntry> chat_format_registry();

// The format of a template's text; throws moeflux::Error if none recognises it.
std::unique_ptr<ChatFormat> chat_format_for_template(std::string_view template_text);
// The format named `name` ("chatml", "qwen3"); throws moeflux::Error listing the known names.
std::unique_ptr<ChatFormat> chat_format_by_name(std::string_view name);

}  // namespace moeflux
