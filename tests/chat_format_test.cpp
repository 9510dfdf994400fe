// Chat formats against transformers: tests/fixtures/chat/<template>.json holds conversations
// rendered by apply_chat_template(tokenize=False) with the template file of the same name
// (generate.py there); our rendering must equal them byte for byte.
#include "text/chat_format.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

struct FixtureCase {
  std::string name;
  std::vector<ChatMessage> messages;
  ChatOptions opts;
  std::string expected;
};

std::vector<FixtureCase> load_cases(const std::string& file) {
  const auto j = nlohmann::json::parse(read_text(fixture_dir("chat/" + file)));
  std::vector<FixtureCase> cases;
  for (const auto& c : j.at("cases")) {
    FixtureCase fc;
    fc.name = c.at("name").get<std::string>();
    for (const auto& m : c.at("messages")) {
      ChatMessage msg{m.at("role").get<std::string>(), m.at("content").get<std::string>(), {}};
      if (m.contains("reasoning_content"))
        msg.reasoning_content = m.at("reasoning_content").get<std::string>();
      fc.messages.push_back(std::move(msg));
    }
    fc.opts.add_generation_prompt = c.at("add_generation_prompt").get<bool>();
    if (!c.at("enable_thinking").is_null())
      fc.opts.enable_thinking = c.at("enable_thinking").get<bool>();
    fc.expected = c.at("expected").get<std::string>();
    cases.push_back(std::move(fc));
  }
  return cases;
}

void expect_matches_fixtures(const std::string& format, const std::string& file) {
  const auto fmt = chat_format_by_name(format);
  const auto cases = load_cases(file);
  ASSERT_GE(cases.size(), 20u);
  for (const auto& c : cases)
    EXPECT_EQ(fmt->render(c.messages, c.opts), c.expected) << file << ": " << c.name;
}

TEST(ChatFormat, Qwen3MatchesTransformers) {
  expect_matches_fixtures("qwen3", "qwen3.json");
}
TEST(ChatFormat, ChatMLMatchesTransformers) {
  expect_matches_fixtures("chatml", "chatml.json");
}

TEST(ChatFormat, RecognisesTemplates) {
  EXPECT_EQ(chat_format_for_template(read_text(fixture_dir("chat/qwen3.jinja")))->name(), "qwen3");
  EXPECT_EQ(chat_format_for_template(read_text(fixture_dir("chat/chatml.jinja")))->name(),
            "chatml");
  EXPECT_THROW(chat_format_for_template("{{ bos_token }}{% for m in messages %}[INST]..."), Error);
  // Always-thinking ChatML templates (Qwen3.5, QwQ) render differently: refused, not approximated.
  std::string always_think = read_text(fixture_dir("chat/qwen3.jinja"));
  const std::string gen = R"({{- '<|im_start|>assistant\n' }})";
  ASSERT_NE(always_think.find(gen), std::string::npos);
  always_think.replace(always_think.find(gen), gen.size(),
                       R"({{- '<|im_start|>assistant\n<think>\n' }})");
  EXPECT_THROW(chat_format_for_template(always_think), Error);
  EXPECT_THROW(
      chat_format_for_template(
          R"({%- for message in messages %}{{- '<|im_start|>' + message.role }}{%- endfor )"
          R"(%}{{- '<|im_start|>assistant\n<think>\n' }})"),
      Error);
  EXPECT_THROW(chat_format_by_name("llama2"), Error);
  const auto q = chat_format_by_name("qwen3");
  EXPECT_EQ(q->think_open(), "<think>");
  EXPECT_EQ(q->think_close(), "</think>");
  EXPECT_EQ(q->end_of_turn_token(), "<|im_end|>");
  EXPECT_TRUE(chat_format_by_name("chatml")->think_open().empty());
}

// The append-only continuation equals the suffix of a full re-rendering whenever the template
// does not rewrite earlier turns (replies without reasoning).
TEST(ChatFormat, ContinuationAppendsTheNextTurn) {
  for (const char* name : {"chatml", "qwen3"}) {
    const auto fmt = chat_format_by_name(name);
    ChatOptions opts;
    const std::vector<ChatMessage> first = {{"system", "Be brief.", {}}, {"user", "Hi", {}}};
    const std::string reply = "Hello there.";
    std::vector<ChatMessage> all = first;
    all.push_back({"assistant", reply, {}});
    all.push_back({"user", "Again", {}});
    const std::string incremental =
        fmt->render(first, opts) + reply +
        fmt->continue_after_reply(std::span(all).subspan(3), opts, /*reply_closed=*/false);
    EXPECT_EQ(incremental, fmt->render(all, opts)) << name;
    // With the end of turn already evaluated, it is not repeated.
    const std::string closed =
        fmt->render(first, opts) + reply + std::string(fmt->end_of_turn()) +
        fmt->continue_after_reply(std::span(all).subspan(3), opts, /*reply_closed=*/true);
    EXPECT_EQ(closed, fmt->render(all, opts)) << name;
  }
  // No thinking: each new generation prompt carries the empty thought.
  const auto q = chat_format_by_name("qwen3");
  ChatOptions no_think;
  no_think.enable_thinking = false;
  const std::vector<ChatMessage> next = {{"user", "More", {}}};
  EXPECT_EQ(q->continue_after_reply(next, no_think, false),
            "<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n<think>\n\n"
            "</think>\n\n");
  // A system message in a continuation is a turn of its own, not the conversation's preamble.
  const std::vector<ChatMessage> sys = {{"system", "Now in French.", {}}, {"user", "Bonjour", {}}};
  EXPECT_EQ(q->continue_after_reply(sys, ChatOptions{}, true),
            "<|im_start|>system\nNow in French.<|im_end|>\n<|im_start|>user\nBonjour<|im_end|>\n"
            "<|im_start|>assistant\n");
}

}  // namespace
}  // namespace moeflux::test
