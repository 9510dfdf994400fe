// The server's parts without HTTP: request validation (every bad request is an ApiError naming
// its field), tools rendered the Qwen3 way, and replies split into reasoning, content and tool
// calls whatever the pieces they stream in.
#include <gtest/gtest.h>

#include "server/api_error.hpp"
#include "server/chat_template.hpp"
#include "server/output_parser.hpp"
#include "server/request.hpp"
#include "test_util.hpp"

namespace moeflux::server {
namespace {

RequestLimits limits() {
  RequestLimits l;
  l.max_tokens = 100;
  l.default_max_tokens = 10;
  return l;
}

void expect_bad(const std::string& body, const std::string& param, bool chat = true) {
  try {
    if (chat)
      parse_chat_request(body, limits());
    else
      parse_completion_request(body, limits());
    ADD_FAILURE() << "accepted: " << body;
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400) << body;
    EXPECT_EQ(e.param(), param) << body << ": " << e.what();
    EXPECT_EQ(error_body(e)["error"]["type"], "invalid_request_error");
  }
}

TEST(ServerRequest, ValidChatRequestIsParsed) {
  const GenerationRequest r = parse_chat_request(R"({
    "model": "m", "stream": true, "stream_options": {"include_usage": true},
    "messages": [{"role": "developer", "content": "be brief"},
                 {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                 {"role": "assistant", "content": null,
                  "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": "42"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "max_tokens": 7, "stop": "END", "temperature": 0, "top_p": 0.5, "top_k": 3, "seed": 9,
    "chat_template_kwargs": {"enable_thinking": false}, "user": "ignored"})",
                                                 limits());
  EXPECT_TRUE(r.chat);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "hi there");
  ASSERT_EQ(r.messages[2].tool_calls.size(), 1u);
  EXPECT_EQ(r.messages[2].tool_calls[0].arguments, "{\"x\":1}");
  EXPECT_EQ(r.messages[3].tool_call_id, "c1");
  EXPECT_EQ(r.tools.size(), 1u);
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_EQ(r.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(*r.temperature, 0.0f);
  EXPECT_EQ(*r.top_k, 3);
  EXPECT_EQ(*r.seed, 9u);
  EXPECT_EQ(r.enable_thinking, false);
  EXPECT_EQ(
      parse_chat_request(R"({"messages":[{"role":"user","content":"x"}]})", limits()).max_tokens,
      10);
}

TEST(ServerRequest, BadRequestsNameTheirField) {
  const std::string user = R"("messages":[{"role":"user","content":"x"}])";
  try {
    parse_chat_request("{not json", limits());
    ADD_FAILURE() << "malformed JSON accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
  }
  expect_bad("[1,2]", "");
  expect_bad("{}", "messages");
  expect_bad(R"({"messages": "hi"})", "messages");
  expect_bad(R"({"messages": []})", "messages");
  expect_bad(R"({"messages": [{"role": "wizard", "content": "x"}]})", "messages[0].role");
  expect_bad(R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content");
  expect_bad(R"({"messages": [{"role": "user"}]})", "messages[0].content");
  expect_bad(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
             "messages[0].content[0].type");
  expect_bad("{" + user + R"(, "max_tokens": 101})", "max_tokens");
  expect_bad("{" + user + R"(, "max_tokens": "5"})", "max_tokens");
  expect_bad("{" + user + R"(, "max_tokens": 0})", "max_tokens");
  expect_bad("{" + user + R"(, "max_tokens": 1e30})", "max_tokens");
  expect_bad("{" + user + R"(, "temperature": 3})", "temperature");
  expect_bad("{" + user + R"(, "temperature": "hot"})", "temperature");
  expect_bad("{" + user + R"(, "top_p": 0})", "top_p");
  expect_bad("{" + user + R"(, "stream": "yes"})", "stream");
  expect_bad("{" + user + R"(, "stop": [1]})", "stop[0]");
  expect_bad("{" + user + R"(, "n": 2})", "n");
  expect_bad("{" + user + R"(, "logprobs": true})", "logprobs");
  expect_bad("{" + user + R"(, "frequency_penalty": 0.5})", "frequency_penalty");
  expect_bad("{" + user + R"(, "seed": "x"})", "seed");
  expect_bad("{" + user + R"(, "tools": [{"type": "retrieval"}]})", "tools[0].type");
  expect_bad("{" + user + R"(, "tools": [{"type": "function", "function": {"name": ""}}]})",
             "tools[0].function.name");
  expect_bad("{" + user + R"(, "tool_choice": "sometimes"})", "tool_choice");
  expect_bad("{" + user + R"(, "continue_final_message": true})", "continue_final_message");
  expect_bad(R"({"prompt": 5})", "prompt", false);
  expect_bad(R"({})", "prompt", false);
  expect_bad(R"({"prompt": [1, -2]})", "prompt[1]", false);
  expect_bad(R"({"prompt": "x", "echo": true})", "echo", false);
}

TEST(ServerRequest, CompletionPromptsAreTextOrIds) {
  EXPECT_EQ(parse_completion_request(R"({"prompt": "abc"})", limits()).prompt, "abc");
  EXPECT_EQ(parse_completion_request(R"({"prompt": ["abc"]})", limits()).prompt, "abc");
  EXPECT_EQ(parse_completion_request(R"({"prompt": [1, 2]})", limits()).prompt_ids,
            (std::vector<int>{1, 2}));
}

TEST(ServerChatTemplate, ToolsAndToolCallsAreRenderedTheQwen3Way) {
  const auto t = chat_template_from_format(chat_format_by_name("qwen3"));
  std::vector<Message> m(4);
  m[0] = {"system", "Be brief.", {}, {}, {}};
  m[1] = {"user", "Weather?", {}, {}, {}};
  m[2] = {"assistant", "", {}, {{"c", "get", "{\"city\": \"Paris\"}"}}, {}};
  m[3] = {"tool", "sunny", {}, {}, "c"};
  const Json tools = Json::parse(
      R"([{"type": "function", "function": {"name": "get", "parameters": {"type": "object", "b": [1, 2.5]}}}])");
  const std::string got = t->render(m, tools, {}).text;
  const std::string want =
      "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist "
      "with the user query.\n\nYou are provided with function signatures within <tools></tools> "
      "XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get\", "
      "\"parameters\": {\"type\": \"object\", \"b\": [1, 2.5]}}}\n</tools>\n\nFor each function "
      "call, return a json object with function name and arguments within "
      "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
      "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather?"
      "<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get\", "
      "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n"
      "<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n";
  EXPECT_EQ(got, want);
  // continue_final_message leaves the last assistant message open.
  std::vector<Message> c = {{"user", "Hi", {}, {}, {}}, {"assistant", "Well,", {}, {}, {}}};
  TemplateOptions o;
  o.continue_final_message = true;
  o.enable_thinking = false;
  const Prompt p = t->render(c, Json::array(), o);
  EXPECT_EQ(p.text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nWell,");
  EXPECT_EQ(p.continued, "Well,");
}

// Feeds `text` to a parser in pieces of `n` bytes.
ParsedDelta parse_in_pieces(const std::string& text, size_t n, bool in_reasoning = false) {
  OutputParser p("<think>", "</think>", true, in_reasoning);
  ParsedDelta all;
  auto take = [&](ParsedDelta d) {
    all.reasoning += d.reasoning;
    all.content += d.content;
    for (auto& c : d.tool_calls) all.tool_calls.push_back(c);
    for (auto& t : d.tool_call_deltas) all.tool_call_deltas.push_back(t);
  };
  for (size_t i = 0; i < text.size(); i += n) take(p.push(text.substr(i, n)));
  take(p.finish());
  return all;
}

TEST(ServerOutputParser, SplitsReasoningContentAndToolCallsWhateverThePieces) {
  const std::string reply =
      "<think>\nLet me look.\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get\", "
      "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n<function=put>\n"
      "<parameter=n>\n3\n</parameter>\n<parameter=s>\nhello world\n</parameter>\n</function>\n"
      "</tool_call>";
  for (size_t n : {1, 2, 3, 7, 1000}) {
    const ParsedDelta d = parse_in_pieces(reply, n);
    EXPECT_EQ(d.reasoning, "Let me look.") << n;
    EXPECT_EQ(d.content, "Checking.") << n;
    ASSERT_EQ(d.tool_calls.size(), 2u) << n;
    EXPECT_EQ(d.tool_calls[0].name, "get");
    EXPECT_EQ(Json::parse(d.tool_calls[0].arguments), Json::parse(R"({"city": "Paris"})"));
    EXPECT_EQ(d.tool_calls[1].name, "put");
    EXPECT_EQ(Json::parse(d.tool_calls[1].arguments),
              Json::parse(R"({"n": 3, "s": "hello world"})"));
  }
  // A reply that starts inside the thought (the prompt opened it).
  const ParsedDelta r = parse_in_pieces("\nhmm\n</think>\n\nYes.", 2, true);
  EXPECT_EQ(r.reasoning, "hmm");
  EXPECT_EQ(r.content, "Yes.");
  // A broken tool call is content, verbatim; text that only looks like a tag start is content.
  const ParsedDelta b = parse_in_pieces("a <tool_call>{oops}</tool_call> b <tool", 3);
  EXPECT_TRUE(b.tool_calls.empty());
  EXPECT_EQ(b.content, "a <tool_call>{oops}</tool_call> b <tool");
  // Plain text with newlines inside is kept.
  EXPECT_EQ(parse_in_pieces("one\n\ntwo\n", 1).content, "one\n\ntwo");
}

// The streamed pieces of each call: the first names it, and the fragments concatenated are the
// arguments of the call as it ended.
void expect_pieces_make_the_calls(const ParsedDelta& d, const std::string& label) {
  for (size_t i = 0; i < d.tool_calls.size(); ++i) {
    std::string name, args;
    size_t pieces = 0, named = 0;
    for (const ToolCallDelta& t : d.tool_call_deltas) {
      if (t.index != i) continue;
      if (pieces++ == 0) name = t.name;
      named += !t.name.empty();
      args += t.arguments;
    }
    EXPECT_EQ(named, 1u) << label << " call " << i;
    EXPECT_EQ(name, d.tool_calls[i].name) << label << " call " << i;
    EXPECT_EQ(args, d.tool_calls[i].arguments) << label << " call " << i;
  }
}

TEST(ServerOutputParser, ToolCallArgumentsStreamInFragments) {
  const std::string json_args = R"({"s": "a}b\"}{", "t": {"u": [1, {"v": null}]}, "w": "é"})";
  const std::string reply = "Text.\n<tool_call>\n{\"name\": \"get\", \"arguments\": " + json_args +
                            "}\n</tool_call>\n<tool_call>\n<function=put>\n<parameter=n>\n3\n"
                            "</parameter>\n<parameter=s>\nhello world\n</parameter>\n</function>\n"
                            "</tool_call>";
  for (size_t n : {1, 2, 5, 1000}) {
    const std::string label = "pieces of " + std::to_string(n);
    const ParsedDelta d = parse_in_pieces(reply, n);
    EXPECT_EQ(d.content, "Text.") << label;
    ASSERT_EQ(d.tool_calls.size(), 2u) << label;
    // The Qwen3 syntax streams the arguments as written; Qwen3.5's are JSON built per parameter.
    EXPECT_EQ(d.tool_calls[0].arguments, json_args) << label;
    EXPECT_EQ(d.tool_calls[1].arguments, R"({"n":3,"s":"hello world"})") << label;
    expect_pieces_make_the_calls(d, label);
  }
  // Byte by byte, the arguments go out as they are written: many pieces per call, and the
  // first of them before the call's body is complete.
  OutputParser p("<think>", "</think>", true, false);
  size_t pieces_before_end = 0;
  const size_t end_of_first = reply.find("</tool_call>");
  for (size_t i = 0; i < reply.size(); ++i) {
    const ParsedDelta d = p.push(reply.substr(i, 1));
    for (const ToolCallDelta& t : d.tool_call_deltas)
      if (t.index == 0 && i < end_of_first && !t.arguments.empty()) ++pieces_before_end;
  }
  EXPECT_GE(pieces_before_end, json_args.size() / 2);
  // The XML syntax: one piece per parameter, then the closing brace.
  const ParsedDelta x = parse_in_pieces(reply.substr(reply.find("<tool_call>\n<function")), 1);
  std::vector<std::string> fragments;
  for (const ToolCallDelta& t : x.tool_call_deltas)
    if (!t.arguments.empty()) fragments.push_back(t.arguments);
  EXPECT_EQ(fragments, (std::vector<std::string>{R"({"n":3)", R"(,"s":"hello world")", "}"}));
}

TEST(ServerOutputParser, ToolCallsCutShortOrInOtherForms) {
  // A reply that ends inside the arguments: the call keeps what was written (JSON syntax) or is
  // closed after its last whole parameter (XML syntax).
  const ParsedDelta j =
      parse_in_pieces("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, 2", 3);
  ASSERT_EQ(j.tool_calls.size(), 1u);
  EXPECT_EQ(j.tool_calls[0].arguments, R"({"a": [1, 2)");
  expect_pieces_make_the_calls(j, "cut JSON");
  const ParsedDelta x = parse_in_pieces(
      "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n<parameter=b>\nxx", 3);
  ASSERT_EQ(x.tool_calls.size(), 1u);
  EXPECT_EQ(x.tool_calls[0].arguments, R"({"a":1})");
  expect_pieces_make_the_calls(x, "cut XML");
  // Other key orders and string arguments are parsed whole at the end: one piece.
  const ParsedDelta o = parse_in_pieces(
      "<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"f\"}</tool_call>"
      "<tool_call>{\"name\": \"g\", \"arguments\": \"{\\\"b\\\": 2}\"}</tool_call>",
      2);
  ASSERT_EQ(o.tool_calls.size(), 2u);
  EXPECT_EQ(o.tool_calls[0].arguments, R"({"a":1})");
  EXPECT_EQ(o.tool_calls[1].arguments, R"({"b": 2})");
  EXPECT_EQ(o.tool_call_deltas.size(), 2u);
  expect_pieces_make_the_calls(o, "whole");
}

TEST(ServerOutputParser, ToolCallBodies) {
  EXPECT_FALSE(parse_tool_call("{\"arguments\": {}}"));
  EXPECT_FALSE(parse_tool_call("[1]"));
  EXPECT_FALSE(parse_tool_call("<function=f>\n<parameter=x>1"));
  const auto s = parse_tool_call("{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->arguments, "{\"a\": 1}");
  // Bytes that are not UTF-8 (a model may write them) become U+FFFD, never an exception.
  const auto bad =
      parse_tool_call("<function=f>\n<parameter=p>\nab\xff\n</parameter>\n</function>");
  ASSERT_TRUE(bad);
  EXPECT_EQ(Json::parse(bad->arguments)["p"], "ab\xef\xbf\xbd");
  const auto none = parse_tool_call("{\"name\": \"f\"}");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->arguments, "{}");
}

TEST(ServerChatTemplate, PythonJsonSpacing) {
  EXPECT_EQ(python_json(Json::parse(R"({"b": [1, {"a": "é\n"}], "a": null, "c": true})")),
            "{\"b\": [1, {\"a\": \"é\\n\"}], \"a\": null, \"c\": true}");
}

}  // namespace
}  // namespace moeflux::server
