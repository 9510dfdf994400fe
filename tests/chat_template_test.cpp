// Chat templates from the checkpoint (text/chat_template.hpp) against transformers: the
// published Qwen3, Qwen3.5, DeepSeek-V3 and GLM-4.5 templates render every conversation of
// tests/fixtures/chat/conversations.json byte for byte as apply_chat_template(tokenize=False)
// did (tests/fixtures/chat/expected/, made by render_templates.py), and refuse the conversations
// the template refused.
#include "text/chat_template.hpp"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

using ojson = nlohmann::ordered_json;

struct Rendered {
  std::string text, error;
};

Rendered render_case(const ChatTemplate& t, const ojson& c, const ojson& special) {
  ChatRenderOptions o;
  for (const auto& [k, v] : special.items()) o.special_tokens[k] = v.get<std::string>();
  o.add_generation_prompt = c.at("add_generation_prompt").get<bool>();
  if (!c.at("enable_thinking").is_null()) o.enable_thinking = c.at("enable_thinking").get<bool>();
  Rendered r;
  try {
    r.text = t.render(c.at("messages"), c.contains("tools") ? c.at("tools") : ojson(nullptr), o);
  } catch (const Error& e) {
    r.error = e.what();
  }
  return r;
}

void expect_matches_transformers(const std::string& name) {
  const ojson j = ojson::parse(read_text(fixture_dir("chat/expected/" + name + ".json")));
  ASSERT_EQ(j.at("template").get<std::string>(), name + ".jinja");
  const ChatTemplate t = ChatTemplate::parse(read_text(fixture_dir("chat/" + name + ".jinja")));
  const ojson& cases = j.at("cases");
  ASSERT_GE(cases.size(), 31u);
  size_t rendered = 0;
  for (const ojson& c : cases) {
    const std::string label = name + ": " + c.at("name").get<std::string>();
    const Rendered r = render_case(t, c, j.at("special_tokens"));
    if (c.contains("error")) {
      // The template refused the conversation: so must we, with raise_exception's own message.
      EXPECT_FALSE(r.error.empty()) << label << " rendered " << r.text;
      if (c.at("error_type") == "TemplateError") {
        EXPECT_NE(r.error.find(c.at("error").get<std::string>()), std::string::npos)
            << label << ": " << r.error;
      }
      continue;
    }
    EXPECT_EQ(r.error, "") << label;
    EXPECT_EQ(r.text, c.at("expected").get<std::string>()) << label;
    ++rendered;
  }
  EXPECT_GE(rendered, 29u) << name;
}

TEST(ChatTemplate, Qwen3MatchesTransformers) {
  expect_matches_transformers("qwen3");
}
TEST(ChatTemplate, Qwen3_5MatchesTransformers) {
  expect_matches_transformers("qwen3_5");
}
TEST(ChatTemplate, DeepSeekV3MatchesTransformers) {
  expect_matches_transformers("deepseek_v3");
}
TEST(ChatTemplate, Glm4_5MatchesTransformers) {
  expect_matches_transformers("glm4_5");
}

// The fixtures exercise what they claim: tools, tool calls, thinking on and off, generation
// prompt on and off, and refusals.
TEST(ChatTemplate, FixturesCoverTheFeatures) {
  const ojson conv = ojson::parse(read_text(fixture_dir("chat/conversations.json")));
  std::map<std::string, int> seen;
  for (const ojson& c : conv.at("cases")) {
    seen["tools"] += c.contains("tools");
    seen["think_off"] += c.at("enable_thinking") == false;
    seen["think_on"] += c.at("enable_thinking") == true;
    seen["no_gen"] += c.at("add_generation_prompt") == false;
    for (const ojson& m : c.at("messages")) {
      seen["tool_calls"] += m.contains("tool_calls");
      seen["tool_results"] += m.at("role") == "tool";
      seen["system"] += m.at("role") == "system";
    }
  }
  for (const auto& [k, n] : seen) EXPECT_GE(n, 2) << k;
  EXPECT_EQ(seen.size(), 7u);
}

TEST(ChatTemplate, ToolsAbsentAreNoneAndOptionsReachTheTemplate) {
  const ChatTemplate t = ChatTemplate::parse(
      "{{ tools is defined }}/{{ tools is none }}/{{ enable_thinking is defined }}/"
      "{{ add_generation_prompt }}/{{ bos_token }}/{{ eos_token is defined }}/{{ effort }}/"
      "{{ messages|length }}");
  ChatRenderOptions o;
  o.special_tokens["bos_token"] = "<s>";
  o.extra = {{"effort", "low"}};
  EXPECT_EQ(t.render(ojson::array({{{"role", "user"}, {"content", "x"}}}), nullptr, o),
            "True/True/False/True/<s>/False/low/1");
  o.enable_thinking = false;
  o.add_generation_prompt = false;
  EXPECT_EQ(t.render(ojson::array(), ojson::array(), o), "True/False/True/False/<s>/False/low/0");
  EXPECT_THROW(t.render(ojson::object(), nullptr, o), Error);
  EXPECT_THROW(t.render(ojson::array(), "tools", o), Error);
  o.extra = {{"messages", 1}};
  EXPECT_THROW(t.render(ojson::array(), nullptr, o), Error);
}

TEST(ChatTemplate, LoadsTemplatesAsTransformers) {
  std::map<std::string, std::string> files;
  auto read = [&](const std::string& name) -> std::optional<std::string> {
    const auto it = files.find(name);
    if (it == files.end()) return std::nullopt;
    return it->second;
  };
  EXPECT_TRUE(load_chat_templates(read).empty());
  files["tokenizer_config.json"] = R"({"chat_template": "from config", "eos_token": "</s>"})";
  ChatTemplates t = load_chat_templates(read);
  ASSERT_NE(t.select(false), nullptr);
  EXPECT_EQ(*t.select(false), "from config");
  files["tokenizer_config.json"] =
      R"({"chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]})";
  t = load_chat_templates(read);
  EXPECT_EQ(*t.select(false), "D");
  EXPECT_EQ(*t.select(true), "T");
  files["chat_template.jinja"] = "from jinja";  // wins over tokenizer_config.json
  EXPECT_EQ(*load_chat_templates(read).select(false), "from jinja");
  files.erase("chat_template.jinja");
  files["tokenizer_config.json"] = R"({"chat_template": 3})";
  EXPECT_THROW(load_chat_templates(read), Error);
  files["tokenizer_config.json"] = "{not json";
  EXPECT_THROW(load_chat_templates(read), Error);

  const auto special = special_tokens_from_config(nlohmann::json::parse(
      R"({"bos_token": {"content": "<b>", "lstrip": false}, "eos_token": "<e>", "unk_token": null})"));
  EXPECT_EQ(special,
            (std::map<std::string, std::string>{{"bos_token", "<b>"}, {"eos_token", "<e>"}}));
}

// moeflux chat keeps its session: each turn evaluates only the text after the reply. For
// templates that do not rewrite earlier turns, reply + continuation equals a full rendering.
TEST(ChatTemplate, ChatFormatContinuesAfterAReply) {
  struct Case {
    const char* file;
    std::map<std::string, std::string> special;
  };
  for (const Case& c :
       {Case{"chatml", {{"eos_token", "<|im_end|>"}}}, Case{"qwen3", {{"eos_token", "<|im_end|>"}}},
        Case{"deepseek_v3",
             {{"bos_token", "<｜begin▁of▁sentence｜>"}, {"eos_token", "<｜end▁of▁sentence｜>"}}}}) {
    ChatRenderOptions base;
    base.special_tokens = c.special;
    const auto fmt = make_template_chat_format(
        ChatTemplate::parse(read_text(fixture_dir(std::string("chat/") + c.file + ".jinja"))),
        base);
    ChatOptions opts;
    const std::vector<ChatMessage> first = {{"system", "Be brief.", {}}, {"user", "Hi", {}}};
    const std::string reply = "Hello there.";
    std::vector<ChatMessage> all = first;
    all.push_back({"assistant", reply, {}});
    all.push_back({"user", "Again", {}});
    const std::string next = fmt->continue_after_reply(std::span(all).subspan(3), opts, false);
    EXPECT_EQ(fmt->render(first, opts) + reply + next, fmt->render(all, opts)) << c.file;
    EXPECT_FALSE(fmt->end_of_turn().empty()) << c.file;
    const std::string closed = fmt->continue_after_reply(std::span(all).subspan(3), opts, true);
    EXPECT_EQ(std::string(fmt->end_of_turn()) + closed, next) << c.file;
  }
  // GLM-4.5 rewrites a past reply (an empty <think></think> before it), so the continuation is
  // what follows the reply in a full rendering: the next turn, with /nothink when thinking is off.
  const auto glm = make_template_chat_format(
      ChatTemplate::parse(read_text(fixture_dir("chat/glm4_5.jinja"))), {});
  ChatOptions no_think;
  no_think.enable_thinking = false;
  const std::vector<ChatMessage> more = {{"user", "More", {}}};
  EXPECT_EQ(glm->continue_after_reply(more, no_think, false),
            "<|user|>\nMore/nothink<|assistant|>\n<think></think>");
  EXPECT_EQ(glm->end_of_turn(), "");
  EXPECT_EQ(glm->think_open(), "<think>");
  // Qwen3.5 opens a thought in the generation prompt.
  ChatRenderOptions qwen;
  qwen.special_tokens["eos_token"] = "<|im_end|>";
  const auto q35 = make_template_chat_format(
      ChatTemplate::parse(read_text(fixture_dir("chat/qwen3_5.jinja"))), qwen);
  EXPECT_EQ(q35->continue_after_reply(more, ChatOptions{}, false),
            "<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n<think>\n");
  EXPECT_EQ(q35->end_of_turn(), "<|im_end|>\n");
}

}  // namespace
}  // namespace moeflux::test
