// Chat templates from the checkpoint: the Jinja `chat_template` a model ships with, rendered by
// our interpreter (src/text/jinja/) exactly as transformers' apply_chat_template(...,
// tokenize=False) renders it (tests/chat_template_test.cpp compares byte for byte on the
// published Qwen3, Qwen3.5, DeepSeek-V3 and GLM-4.5 templates).
//
// The API a server calls: ChatTemplate::render(messages, tools, options) -> prompt text. The
// template sees what transformers passes: `messages` (as given), `tools` (none when not given),
// `add_generation_prompt`, `enable_thinking` only when set, the tokenizer's special tokens
// (bos_token, eos_token, ...) and any extra variables (chat_template_kwargs). Parse request
// bodies with nlohmann::ordered_json: templates write tools with `tojson`, which keeps the keys in
// the order they came in (as Python dicts do).
//
// Where templates come from (load_chat_templates): chat_template.jinja, else chat_template.json
// ("chat_template"), else tokenizer_config.json ("chat_template": a string or a list of
// {"name", "template"}). The converter copies these files into the package verbatim
// (PKG/tokenizer/), so a package renders with its checkpoint's own template.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "text/chat_format.hpp"
#include "text/jinja/template.hpp"

namespace moeflux {

struct ChatRenderOptions {
  bool add_generation_prompt = true;
  std::optional<bool> enable_thinking;  // unset: the variable is not defined
  // The tokenizer's special tokens as transformers passes them: name ("bos_token", "eos_token",
  // "unk_token", "pad_token") -> text; names not listed are undefined in the template.
  std::map<std::string, std::string> special_tokens;
  // Further template variables (an object), e.g. {"reasoning_effort": "low"}; they may not
  // replace messages, tools or add_generation_prompt.
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
};

class ChatTemplate {
 public:
  // Throws jinja::TemplateError (a moeflux::Error) for a malformed template.
  static ChatTemplate parse(std::string_view text, const jinja::Limits& limits = {});

  // `messages`: an array of message objects ({"role", "content", ...: as the OpenAI API and
  // transformers take them}); `tools`: an array of tool schemas, or null for none. Throws
  // moeflux::Error for arguments of the wrong JSON type and jinja::TemplateError when the
  // template fails (raise_exception included: the template refuses the conversation).
  std::string render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                     const ChatRenderOptions& opts) const;

  // The template writes <think> blocks (it mentions "<think>").
  bool has_thinking() const { return thinking_; }

 private:
  jinja::Template tpl_;
  bool thinking_ = false;
};

// The chat templates of a tokenizer directory, by name ("default" for a single template).
struct ChatTemplates {
  std::vector<std::pair<std::string, std::string>> named;

  bool empty() const { return named.empty(); }
  // As transformers chooses: "tool_use" when tools are given and there is one, else "default"
  // (else the only one); nullptr when there is none.
  const std::string* select(bool with_tools) const;
};

// Reads the templates through `read` (a file name of the tokenizer directory -> its content,
// nullopt when absent). Throws moeflux::Error naming the file for invalid JSON or a
// chat_template of the wrong type.
ChatTemplates load_chat_templates(
    const std::function<std::optional<std::string>(const std::string&)>& read);

// bos_token, eos_token, unk_token, pad_token of a tokenizer_config.json (strings or
// {"content": ...} objects; null or absent ones are left out).
std::map<std::string, std::string> special_tokens_from_config(const nlohmann::json& config);

// A ChatFormat rendering with the template (moeflux chat, run --chat). render() is the whole
// conversation; continue_after_reply() is the text a template renders after an assistant reply
// for the new messages (found by rendering a stand-in history whose reply is a marker);
// end_of_turn() is the eos token when the template writes it right after a reply, else "".
// `base` supplies special tokens and extra variables.
std::unique_ptr<ChatFormat> make_template_chat_format(ChatTemplate tpl, ChatRenderOptions base);

}  // namespace moeflux
