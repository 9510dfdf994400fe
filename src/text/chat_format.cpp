#include "text/chat_format.hpp"

#include "core/error.hpp"

namespace moeflux {

namespace {

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";
constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";

// Python's str.lstrip('\n'), str.rstrip('\n'), str.strip('\n').
std::string_view lstrip_nl(std::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
std::string_view rstrip_nl(std::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}
std::string_view strip_nl(std::string_view s) {
  return rstrip_nl(lstrip_nl(s));
}

// Python's s.split(sep)[0] and s.split(sep)[-1].
std::string_view before_first(std::string_view s, std::string_view sep) {
  const size_t at = s.find(sep);
  return at == std::string_view::npos ? s : s.substr(0, at);
}
std::string_view after_last(std::string_view s, std::string_view sep) {
  const size_t at = s.rfind(sep);
  return at == std::string_view::npos ? s : s.substr(at + sep.size());
}

bool contains(std::string_view s, std::string_view what) {
  return s.find(what) != std::string_view::npos;
}

// <|im_start|>{role}\n{content}<|im_end|>\n
void chatml_turn(std::string& out, std::string_view role, std::string_view content) {
  out.append(kImStart).append(role).append("\n").append(content).append(kImEnd).append("\n");
}

class ChatMLFormat : public ChatFormat {
 public:
  std::string_view name() const override { return "chatml"; }

  std::string render(std::span<const ChatMessage> messages,
                     const ChatOptions& opts) const override {
    std::string out;
    for (const auto& m : messages) chatml_turn(out, m.role, m.content);
    if (opts.add_generation_prompt) out.append(kImStart).append("assistant\n");
    return out;
  }

  std::string continue_after_reply(std::span<const ChatMessage> messages, const ChatOptions& opts,
                                   bool reply_closed) const override {
    std::string out = reply_closed ? "" : std::string(end_of_turn());
    return out + render(messages, opts);
  }

  std::string_view end_of_turn() const override { return "<|im_end|>\n"; }
  std::string_view end_of_turn_token() const override { return kImEnd; }
};

// The Qwen3 chat template (tests/fixtures/chat/qwen3.jinja) without the `tools` preamble and
// tool_calls, which moeflux does not produce.
class Qwen3Format : public ChatMLFormat {
 public:
  std::string_view name() const override { return "qwen3"; }
  std::string_view think_open() const override { return kThinkOpen; }
  std::string_view think_close() const override { return kThinkClose; }

  std::string render(std::span<const ChatMessage> messages,
                     const ChatOptions& opts) const override {
    std::string out;
    const long n = long(messages.size());
    if (n > 0 && messages[0].role == "system") chatml_turn(out, "system", messages[0].content);
    // The last real user query: the last user message that is not a wrapped tool response.
    long last_query = n - 1;
    for (long i = n - 1; i >= 0; --i) {
      const std::string_view c = messages[size_t(i)].content;
      if (messages[size_t(i)].role == "user" &&
          !(c.starts_with("<tool_response>") && c.ends_with("</tool_response>"))) {
        last_query = i;
        break;
      }
    }
    for (long i = 0; i < n; ++i) turn(out, messages, i, i > last_query, /*system_first=*/true);
    generation_prompt(out, opts);
    return out;
  }

  std::string continue_after_reply(std::span<const ChatMessage> messages, const ChatOptions& opts,
                                   bool reply_closed) const override {
    std::string out = reply_closed ? "" : std::string(end_of_turn());
    // New turns after a reply: a system message is not the conversation's first; an assistant
    // message (not expected here) counts as following the last query only if no user turn
    // comes after it.
    bool after_query = true;
    for (const auto& m : messages) after_query = after_query && m.role != "user";
    for (long i = 0; i < long(messages.size()); ++i)
      turn(out, messages, i, after_query, /*system_first=*/false);
    generation_prompt(out, opts);
    return out;
  }

 private:
  static void generation_prompt(std::string& out, const ChatOptions& opts) {
    if (!opts.add_generation_prompt) return;
    out.append(kImStart).append("assistant\n");
    if (opts.enable_thinking == false) out.append("<think>\n\n</think>\n\n");
  }

  // Message i. `after_query`: it follows the last real user query (the current agentic turn).
  // `system_first`: message 0 of `messages` opens the conversation (a system message there was
  // rendered already).
  static void turn(std::string& out, std::span<const ChatMessage> messages, long i,
                   bool after_query, bool system_first) {
    const ChatMessage& m = messages[size_t(i)];
    const bool last = i + 1 == long(messages.size());
    if (m.role == "user" || (m.role == "system" && !(system_first && i == 0))) {
      chatml_turn(out, m.role, m.content);
    } else if (m.role == "assistant") {
      std::string_view content = m.content, reasoning;
      if (m.reasoning_content) {
        reasoning = *m.reasoning_content;
      } else if (contains(m.content, kThinkClose)) {
        content = lstrip_nl(after_last(m.content, kThinkClose));
        reasoning =
            lstrip_nl(after_last(rstrip_nl(before_first(m.content, kThinkClose)), kThinkOpen));
      }
      out.append(kImStart).append("assistant\n");
      if (after_query && (last || !reasoning.empty())) {
        out.append(kThinkOpen).append("\n").append(strip_nl(reasoning)).append("\n");
        out.append(kThinkClose).append("\n\n").append(lstrip_nl(content));
      } else {
        out.append(content);
      }
      out.append(kImEnd).append("\n");
    } else if (m.role == "tool") {
      // Consecutive tool results share one user turn.
      if (i == 0 || messages[size_t(i - 1)].role != "tool") out.append(kImStart).append("user");
      out.append("\n<tool_response>\n").append(m.content).append("\n</tool_response>");
      if (last || messages[size_t(i + 1)].role != "tool") out.append(kImEnd).append("\n");
    }
    // Other roles are not rendered (as the template).
  }
};

template <class F>
std::unique_ptr<ChatFormat> make() {
  return std::make_unique<F>();
}

// Recognisers read the template's source text, where "\n" is written as backslash + n.
// Qwen3 (hybrid thinking): the enable_thinking switch that appends an empty thought.
// Templates whose generation prompt always opens <think> (Qwen3.5, QwQ, Qwen3-*-Thinking-2507)
// render differently and are not recognised: they get a format of their own when verified.
bool is_qwen3(std::string_view t) {
  return contains(t, kImStart) &&
         contains(t, "enable_thinking is defined and enable_thinking is false") &&
         contains(t, R"('<think>\n\n</think>\n\n')") &&
         !contains(t, R"(<|im_start|>assistant\n<think>\n)");
}
// Plain ChatML: ChatML turns and no thinking at all.
bool is_chatml(std::string_view t) {
  return contains(t, kImStart) && !contains(t, kThinkOpen);
}

const ChatFormatEntry kRegistry[] = {
    {"qwen3", is_qwen3, make<Qwen3Format>}, {"chatml", is_chatml, make<ChatMLFormat>},
    // {"deepseek_v3", is_deepseek_v3, make<DeepSeekV3Format>} comes with the deepseek_v3 family.
};

}  // namespace

std::span<const ChatFormatEntry> chat_format_registry() {
  return kRegistry;
}

std::unique_ptr<ChatFormat> chat_format_for_template(std::string_view template_text) {
  for (const auto& e : chat_format_registry())
    if (e.recognises(template_text)) return e.make();
  std::string names;
  for (const auto& e : chat_format_registry())
    names += (names.empty() ? "" : ", ") + std::string(e.name);
  fail("unsupported chat template (known formats: " + names + ")");
}

std::unique_ptr<ChatFormat> chat_format_by_name(std::string_view name) {
  std::string names;
  for (const auto& e : chat_format_registry()) {
    if (e.name == name) return e.make();
    names += (names.empty() ? "" : ", ") + std::string(e.name);
  }
  fail("unknown chat format '" + std::string(name) + "' (known: " + names + ")");
}

}  // namespace moeflux
