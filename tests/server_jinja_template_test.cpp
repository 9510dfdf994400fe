// The server's ChatTemplate over the checkpoint's own Jinja template (server/jinja_chat_template):
// requests converted to what apply_chat_template receives render byte for byte as transformers
// did on the fixtures, agree with the hand-written Qwen3 path where the two should, tool calls
// written by the template parse back into tool_calls, continue_final_message cuts as
// transformers does, and a template's refusal is a 400 with its message.
#include <gtest/gtest.h>

#include "server/api_error.hpp"
#include "server/final_message.hpp"
#include "server/jinja_chat_template.hpp"
#include "server/output_parser.hpp"
#include "test_util.hpp"

namespace moeflux::server {
namespace {

std::string template_text(const std::string& name) {
  return test::read_text(test::fixture_dir("chat/" + name + ".jinja"));
}

ChatTemplates one_template(const std::string& name) {
  ChatTemplates t;
  t.named.emplace_back("default", template_text(name));
  return t;
}

ChatRenderOptions qwen_tokens() {
  ChatRenderOptions o;
  o.special_tokens = {{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}};
  return o;
}

std::unique_ptr<ChatTemplate> jinja(const std::string& name,
                                    std::unique_ptr<ChatTemplate> fallback = nullptr) {
  return chat_template_from_jinja(one_template(name), qwen_tokens(), std::move(fallback));
}

// A fixture case's messages as the server holds them (nullopt: not expressible in a request, such
// as a list of content parts, which the server joins into one string).
std::optional<std::vector<Message>> server_messages(const Json& messages) {
  std::vector<Message> out;
  for (const Json& j : messages) {
    Message m;
    m.role = j.at("role").get<std::string>();
    if (j.contains("content") && !j.at("content").is_null()) {
      if (!j.at("content").is_string()) return std::nullopt;
      m.content = j.at("content").get<std::string>();
    }
    if (j.contains("reasoning_content"))
      m.reasoning_content = j.at("reasoning_content").get<std::string>();
    if (j.contains("tool_calls"))
      for (const Json& c : j.at("tool_calls")) {
        const Json& f = c.at("function");
        // As a client sends them: the arguments as JSON text.
        const Json& a = f.at("arguments");
        m.tool_calls.push_back({c.value("id", ""), f.at("name").get<std::string>(),
                                a.is_string() ? a.get<std::string>() : a.dump()});
      }
    m.tool_call_id = j.value("tool_call_id", "");
    out.push_back(std::move(m));
  }
  return out;
}

// Every fixture conversation a request can carry renders as transformers rendered it.
// `writes_tools` false: cases with tools or tool calls are left out (the template has none).
void expect_fixtures_render_as_transformers(const std::string& name, size_t at_least,
                                            bool writes_tools = true) {
  const Json j = Json::parse(test::read_text(test::fixture_dir("chat/expected/" + name + ".json")));
  ChatRenderOptions base;
  for (const auto& [k, v] : j.at("special_tokens").items())
    base.special_tokens[k] = v.get<std::string>();
  const auto t = chat_template_from_jinja(one_template(name), base, nullptr);
  size_t checked = 0;
  for (const Json& c : j.at("cases")) {
    const std::string label = name + ": " + c.at("name").get<std::string>();
    const auto messages = server_messages(c.at("messages"));
    // The server always asks for the generation prompt (or continues the last message).
    if (!messages || !c.at("add_generation_prompt").get<bool>()) continue;
    TemplateOptions o;
    if (!c.at("enable_thinking").is_null()) o.enable_thinking = c.at("enable_thinking").get<bool>();
    const Json tools =
        c.contains("tools") && !c.at("tools").is_null() ? c.at("tools") : Json::array();
    bool tool_calls = false;
    for (const Message& m : *messages) tool_calls |= !m.tool_calls.empty();
    if (!writes_tools && (!tools.empty() || tool_calls)) continue;
    if (c.contains("error")) {
      try {
        t->render(*messages, tools, o);
        ADD_FAILURE() << label << ": rendered a conversation the template refuses";
      } catch (const ApiError& e) {
        EXPECT_EQ(e.status(), 400) << label;
        if (c.at("error_type") == "TemplateError") {
          EXPECT_NE(std::string(e.what()).find(c.at("error").get<std::string>()), std::string::npos)
              << label << ": " << e.what();
        }
      }
      continue;
    }
    EXPECT_EQ(t->render(*messages, tools, o).text, c.at("expected").get<std::string>()) << label;
    ++checked;
  }
  EXPECT_GE(checked, at_least) << name;
}

TEST(ServerJinjaTemplate, RequestsRenderAsTransformersDid) {
  // Every case a request can carry (string contents, a generation prompt) renders; Qwen3.5
  // refuses two more.
  expect_fixtures_render_as_transformers("qwen3", 21);
  expect_fixtures_render_as_transformers("qwen3_5", 19);
  expect_fixtures_render_as_transformers("glm4_5", 21);
}

TEST(ServerJinjaTemplate, DeepSeekV3RendersAsTransformersDidAndRefusesTools) {
  // DeepSeek-V3's template lists no tools: requests with tools or tool calls go to the fallback
  // (none here: they are refused), the others render as transformers did.
  expect_fixtures_render_as_transformers("deepseek_v3", 15, /*writes_tools=*/false);
  const auto t = chat_template_from_jinja(one_template("deepseek_v3"), {}, nullptr);
  const std::vector<Message> m = {{"user", "Hi", {}, {}, {}}};
  try {
    t->render(m, Json::parse(R"([{"type": "function", "function": {"name": "f"}}])"), {});
    ADD_FAILURE() << "tools rendered by a template that has none";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.param(), "tools");
  }
}

// Conversations on which the Jinja Qwen3 template and the hand-written Qwen3 path must agree:
// plain turns, system prompts, reasoning, tools, tool calls (arguments in json.dumps spacing, as
// the template writes an object) and tool results, thinking on, off and unset.
TEST(ServerJinjaTemplate, Qwen3AgreesWithTheHandWrittenPath) {
  const auto from_jinja = jinja("qwen3");
  const auto by_hand = chat_template_from_format(chat_format_by_name("qwen3"));
  const Json tools = Json::parse(R"([{"type": "function", "function": {"name": "get_weather",
      "description": "Weather of a city", "parameters": {"type": "object", "properties":
      {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}])");
  const std::vector<std::vector<Message>> conversations = {
      {{"user", "Hello", {}, {}, {}}},
      {{"system", "Be brief.", {}, {}, {}}, {"user", "Hello", {}, {}, {}}},
      {{"user", "Hi", {}, {}, {}},
       {"assistant", "<think>\nhm\n</think>\n\nHello!", {}, {}, {}},
       {"user", "Again", {}, {}, {}}},
      {{"system", "Use tools.", {}, {}, {}},
       {"user", "Weather in Paris?", {}, {}, {}},
       {"assistant", "", {}, {{"c1", "get_weather", R"({"city": "Paris", "days": 2})"}}, {}},
       {"tool", "sunny", {}, {}, "c1"}},
      {{"user", "Paris and Rome?", {}, {}, {}},
       {"assistant",
        "Checking both.",
        "I need two calls.",
        {{"c1", "get_weather", R"({"city": "Paris"})"},
         {"c2", "get_weather", R"({"city": "Rome"})"}},
        {}},
       {"tool", "sunny", {}, {}, "c1"},
       {"tool", "rain", {}, {}, "c2"}},
  };
  for (size_t i = 0; i < conversations.size(); ++i)
    for (const Json& t : {Json::array(), tools})
      for (const std::optional<bool> think :
           {std::optional<bool>(), std::optional<bool>(false), std::optional<bool>(true)}) {
        TemplateOptions o;
        o.enable_thinking = think;
        EXPECT_EQ(from_jinja->render(conversations[i], t, o).text,
                  by_hand->render(conversations[i], t, o).text)
            << "conversation " << i << ", tools " << t.size() << ", thinking "
            << (think ? int(*think) : -1);
      }
  EXPECT_EQ(from_jinja->think_open(), "<think>");
  EXPECT_EQ(from_jinja->think_close(), "</think>");
}

TEST(ServerJinjaTemplate, ArgumentsAreAnObjectForTheTemplate) {
  // A client's compact arguments reach the template as an object, which writes them as
  // json.dumps does (the hand-written path copies the text); Qwen3.5 writes one parameter each.
  const std::vector<Message> m = {
      {"user", "Weather?", {}, {}, {}},
      {"assistant", "", {}, {{"c1", "get", R"({"city":"Paris","n":[1,2]})"}}, {}},
      {"tool", "sunny", {}, {}, "c1"}};
  const std::string q3 = jinja("qwen3")->render(m, Json::array(), {}).text;
  EXPECT_NE(q3.find("<tool_call>\n{\"name\": \"get\", \"arguments\": {\"city\": \"Paris\", \"n\": "
                    "[1, 2]}}\n</tool_call>"),
            std::string::npos)
      << q3;
  const std::string q35 = jinja("qwen3_5")->render(m, Json::array(), {}).text;
  EXPECT_NE(q35.find("<tool_call>\n<function=get>\n<parameter=city>\nParis\n</parameter>\n"
                     "<parameter=n>\n[1, 2]\n</parameter>\n</function>\n</tool_call>"),
            std::string::npos)
      << q35;
  // Arguments that are not a JSON object go as text: Qwen3 writes them, Qwen3.5 refuses (400).
  const std::vector<Message> bad = {{"user", "Weather?", {}, {}, {}},
                                    {"assistant", "", {}, {{"c1", "get", "not json"}}, {}},
                                    {"tool", "sunny", {}, {}, "c1"}};
  EXPECT_NE(jinja("qwen3")->render(bad, Json::array(), {}).text.find("\"arguments\": not json}"),
            std::string::npos);
  try {
    jinja("qwen3_5")->render(bad, Json::array(), {});
    ADD_FAILURE() << "Qwen3.5 rendered arguments that are not an object";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.param(), "messages");
  }
}

// The assistant turn of a rendering that ends with a tool call: the text between its opening and
// <|im_end|>.
std::string last_assistant_turn(const std::string& text) {
  const std::string open = "<|im_start|>assistant\n";
  const size_t a = text.rfind(open);
  const size_t e = text.find("<|im_end|>", a);
  return text.substr(a + open.size(), e - a - open.size());
}

TEST(ServerJinjaTemplate, ToolCallsRoundTripThroughTheTemplatesFormat) {
  const std::string args = R"({"city": "Paris", "days": 3, "units": {"t": "C"}})";
  for (const std::string name : {"qwen3", "qwen3_5"}) {
    const std::vector<Message> m = {
        {"user", "Weather?", {}, {}, {}},
        {"assistant", "Let me check.", {}, {{"c1", "get_weather", args}, {"c2", "now", "{}"}}, {}}};
    // A user turn follows, so the assistant turn is complete (and rendered without a thought).
    std::vector<Message> with_next = m;
    with_next.push_back({"user", "next", {}, {}, {}});
    const std::string text = jinja(name)->render(with_next, Json::array(), {}).text;
    const std::string reply = last_assistant_turn(text.substr(0, text.rfind("<|im_start|>user")));
    OutputParser p("<think>", "</think>", true, false);
    ParsedDelta d = p.push(reply);
    ParsedDelta tail = p.finish();
    d.content += tail.content;
    for (auto& c : tail.tool_calls) d.tool_calls.push_back(c);
    EXPECT_NE(d.content.find("Let me check."), std::string::npos) << name << ": " << reply;
    ASSERT_EQ(d.tool_calls.size(), 2u) << name << ": " << reply;
    EXPECT_EQ(d.tool_calls[0].name, "get_weather");
    EXPECT_EQ(Json::parse(d.tool_calls[0].arguments), Json::parse(args)) << name;
    EXPECT_EQ(d.tool_calls[1].name, "now");
    EXPECT_EQ(Json::parse(d.tool_calls[1].arguments), Json::object()) << name;
  }
}

TEST(ServerJinjaTemplate, ContinueFinalMessageCutsAsTransformers) {
  const std::vector<Message> m = {{"user", "Hi", {}, {}, {}}, {"assistant", "Well, ", {}, {}, {}}};
  TemplateOptions o;
  o.continue_final_message = true;
  o.enable_thinking = false;
  // Qwen3 writes the content as given: the cut keeps its trailing space. The last assistant
  // message of the current turn gets the template's (empty) thought.
  const Prompt q3 = jinja("qwen3")->render(m, Json::array(), o);
  EXPECT_EQ(q3.text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>"
            "\n\nWell, ");
  EXPECT_EQ(q3.continued, "Well, ");
  // Qwen3.5 trims contents: the cut is after the stripped content.
  const Prompt q35 = jinja("qwen3_5")->render(m, Json::array(), o);
  EXPECT_EQ(q35.text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>"
            "\n\nWell,");
  EXPECT_EQ(q35.continued, "Well,");
  // The rule itself: the last occurrence; leading whitespace means the stripped content.
  EXPECT_EQ(cut_after_final_message("ab x ab x tail", "ab x").text, "ab x ab x");
  EXPECT_EQ(cut_after_final_message("A: x  \nB", " x  ").text, "A: x");
  EXPECT_EQ(cut_after_final_message("A: x  \nB", "x  ").text, "A: x  ");
  EXPECT_EQ(cut_after_final_message("A: x  \nB", "x  ").continued, "x  ");
  for (const std::string content : {"missing", "", " \n"}) {
    try {
      cut_after_final_message("A: x", content);
      ADD_FAILURE() << "cut for '" << content << "'";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), 400);
      EXPECT_EQ(e.param(), "continue_final_message");
    }
  }
}

TEST(ServerJinjaTemplate, TemplateRefusalsAre400WithTheTemplatesMessage) {
  const std::vector<Message> m = {{"user", "Hi", {}, {}, {}}, {"system", "late", {}, {}, {}}};
  try {
    jinja("qwen3_5")->render(m, Json::array(), {});
    ADD_FAILURE() << "rendered";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_NE(std::string(e.what()).find("System message must be at the beginning."),
              std::string::npos)
        << e.what();
    EXPECT_EQ(error_body(e)["error"]["type"], "invalid_request_error");
  }
}

TEST(ServerJinjaTemplate, TemplateWithoutToolsHandsToolRequestsToTheFallback) {
  ChatRenderOptions base;
  const auto chatml = [&] {
    return make_template_chat_format(moeflux::ChatTemplate::parse(template_text("chatml")), base);
  };
  const auto t =
      chat_template_from_jinja(one_template("chatml"), base, chat_template_from_format(chatml()));
  const auto by_hand = chat_template_from_format(chatml());
  EXPECT_EQ(t->think_open(), "");
  EXPECT_EQ(t->name(),
            "the package's Jinja template (it writes no tool calls: tools in the hand-written "
            "Qwen3 format)");
  EXPECT_EQ(jinja("qwen3_5")->name(), "the package's Jinja template");
  const std::vector<Message> plain = {{"user", "Hi", {}, {}, {}}};
  EXPECT_EQ(t->render(plain, Json::array(), {}).text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const Json tools = Json::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  EXPECT_EQ(t->render(plain, tools, {}).text, by_hand->render(plain, tools, {}).text);
  EXPECT_NE(t->render(plain, tools, {}).text.find("<tools>"), std::string::npos);
  const std::vector<Message> call = {{"user", "Hi", {}, {}, {}},
                                     {"assistant", "", {}, {{"c", "f", "{}"}}, {}}};
  EXPECT_EQ(t->render(call, Json::array(), {}).text, by_hand->render(call, Json::array(), {}).text);
}

}  // namespace
}  // namespace moeflux::server
