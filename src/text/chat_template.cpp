#include "text/chat_template.hpp"

#include "core/error.hpp"

namespace moeflux {

ChatTemplate ChatTemplate::parse(std::string_view text, const jinja::Limits& limits) {
  ChatTemplate t;
  t.tpl_ = jinja::Template::parse(text, limits);
  t.thinking_ = text.find("<think>") != std::string_view::npos;
  return t;
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages,
                                 const nlohmann::ordered_json& tools,
                                 const ChatRenderOptions& opts) const {
  if (!messages.is_array()) fail("chat template: messages must be a JSON array");
  if (!tools.is_null() && !tools.is_array()) fail("chat template: tools must be a JSON array");
  if (!opts.extra.is_object()) fail("chat template: extra variables must be a JSON object");
  std::unordered_map<std::string, jinja::Value> vars;
  for (const auto& [k, v] : opts.special_tokens) vars[k] = jinja::Value::string(v);
  for (const auto& [k, v] : opts.extra.items()) {
    if (k == "messages" || k == "tools" || k == "add_generation_prompt")
      fail("chat template: extra variable '" + printable(k) + "' would replace an argument");
    vars[k] = jinja::Value::from_json(v);
  }
  vars["messages"] = jinja::Value::from_json(messages);
  vars["tools"] = jinja::Value::from_json(tools);  // null: none, as transformers passes it
  vars["add_generation_prompt"] = jinja::Value::boolean(opts.add_generation_prompt);
  if (opts.enable_thinking) vars["enable_thinking"] = jinja::Value::boolean(*opts.enable_thinking);
  return tpl_.render(std::move(vars));
}

const std::string* ChatTemplates::select(bool with_tools) const {
  const std::string* fallback = named.size() == 1 ? &named[0].second : nullptr;
  const std::string* def = nullptr;
  for (const auto& [name, text] : named) {
    if (with_tools && name == "tool_use") return &text;
    if (name == "default") def = &text;
  }
  return def ? def : fallback;
}

namespace {

nlohmann::json parse_json(const std::string& file, const std::string& text) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(file + ": invalid JSON (" + e.what() + ")");
  }
}

}  // namespace

ChatTemplates load_chat_templates(
    const std::function<std::optional<std::string>(const std::string&)>& read) {
  ChatTemplates out;
  if (auto text = read("chat_template.jinja")) {
    out.named.emplace_back("default", std::move(*text));
    return out;
  }
  if (auto text = read("chat_template.json")) {
    const auto j = parse_json("chat_template.json", *text);
    if (j.is_object() && j.contains("chat_template")) {
      if (!j.at("chat_template").is_string())
        fail("chat_template.json: chat_template is not a string");
      out.named.emplace_back("default", j.at("chat_template").get<std::string>());
      return out;
    }
  }
  if (auto text = read("tokenizer_config.json")) {
    const auto j = parse_json("tokenizer_config.json", *text);
    if (!j.is_object() || !j.contains("chat_template") || j.at("chat_template").is_null())
      return out;
    const auto& t = j.at("chat_template");
    if (t.is_string()) {
      out.named.emplace_back("default", t.get<std::string>());
    } else if (t.is_array()) {
      for (const auto& e : t) {
        if (!e.is_object() || !e.contains("name") || !e.contains("template") ||
            !e.at("name").is_string() || !e.at("template").is_string())
          fail("tokenizer_config.json: chat_template list entries need a name and a template");
        out.named.emplace_back(e.at("name").get<std::string>(),
                               e.at("template").get<std::string>());
      }
    } else {
      fail("tokenizer_config.json: chat_template is neither a string nor a list");
    }
  }
  return out;
}

std::map<std::string, std::string> special_tokens_from_config(const nlohmann::json& config) {
  std::map<std::string, std::string> out;
  if (!config.is_object()) return out;
  for (const char* name : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    if (!config.contains(name)) continue;
    const auto& t = config.at(name);
    if (t.is_string()) {
      out[name] = t.get<std::string>();
    } else if (t.is_object() && t.contains("content") && t.at("content").is_string()) {
      out[name] = t.at("content").get<std::string>();
    }
  }
  return out;
}

namespace {

// Stands for an assistant reply in the history continue_after_reply() renders: plain ASCII with
// nothing a template strips or splits on.
constexpr std::string_view kReplyMarker = "MOEFLUXREPLYMARKER7f3a9c";

nlohmann::ordered_json to_json(std::span<const ChatMessage> messages) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    nlohmann::ordered_json j = {{"role", m.role}, {"content", m.content}};
    if (m.reasoning_content) j["reasoning_content"] = *m.reasoning_content;
    out.push_back(std::move(j));
  }
  return out;
}

class TemplateChatFormat : public ChatFormat {
 public:
  TemplateChatFormat(ChatTemplate tpl, ChatRenderOptions base)
      : tpl_(std::move(tpl)), base_(std::move(base)) {
    const auto eos = base_.special_tokens.find("eos_token");
    eos_ = eos == base_.special_tokens.end() ? "" : eos->second;
    // What follows a reply before the next turn: the eos token (and newlines) when the template
    // writes it there.
    try {
      ChatOptions o;
      o.add_generation_prompt = false;
      const std::vector<ChatMessage> next = {{"user", "Next", {}}};
      const std::string after = after_reply(next, o);
      if (!eos_.empty() && after.starts_with(eos_)) {
        size_t n = eos_.size();
        while (n < after.size() && after[n] == '\n') ++n;
        end_of_turn_ = after.substr(0, n);
      }
    } catch (const Error&) {
      // A template that refuses the stand-in history: end_of_turn stays "".
    }
  }

  std::string_view name() const override { return "template"; }

  std::string render(std::span<const ChatMessage> messages,
                     const ChatOptions& opts) const override {
    return tpl_.render(to_json(messages), nullptr, options(opts));
  }

  std::string continue_after_reply(std::span<const ChatMessage> messages, const ChatOptions& opts,
                                   bool reply_closed) const override {
    std::string after = after_reply(messages, opts);
    if (reply_closed && after.starts_with(end_of_turn_)) after.erase(0, end_of_turn_.size());
    return after;
  }

  std::string_view end_of_turn() const override { return end_of_turn_; }
  std::string_view end_of_turn_token() const override { return eos_; }
  std::string_view think_open() const override { return tpl_.has_thinking() ? "<think>" : ""; }
  std::string_view think_close() const override { return tpl_.has_thinking() ? "</think>" : ""; }

 private:
  ChatRenderOptions options(const ChatOptions& opts) const {
    ChatRenderOptions o = base_;
    o.add_generation_prompt = opts.add_generation_prompt;
    o.enable_thinking = opts.enable_thinking;
    return o;
  }

  // The text after the reply in a rendering of [user, assistant reply, messages...].
  std::string after_reply(std::span<const ChatMessage> messages, const ChatOptions& opts) const {
    std::vector<ChatMessage> all = {{"user", "Earlier question", {}},
                                    {"assistant", std::string(kReplyMarker), {}}};
    all.insert(all.end(), messages.begin(), messages.end());
    const std::string text = render(all, opts);
    const size_t at = text.find(kReplyMarker);
    if (at == std::string::npos)
      fail(
          "the chat template does not render an assistant reply as given, so a conversation "
          "cannot continue incrementally");
    return text.substr(at + kReplyMarker.size());
  }

  ChatTemplate tpl_;
  ChatRenderOptions base_;
  std::string eos_, end_of_turn_;
};

}  // namespace

std::unique_ptr<ChatFormat> make_template_chat_format(ChatTemplate tpl, ChatRenderOptions base) {
  return std::make_unique<TemplateChatFormat>(std::move(tpl), std::move(base));
}

}  // namespace moeflux
