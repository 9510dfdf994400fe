// `moeflux serve` on a package that carries a published Jinja chat template (the bundled model
// with Qwen3.5's template in its tokenizer_config.json): prompts are the template's rendering
// (the prompt token count is that of the text the template renders, tools included), a
// template's raise_exception is a 400 with its message, and a tool call written in the
// template's own syntax comes back as tool_calls, streamed as a named first piece and argument
// fragments, and goes back in rendered by the template.
#include <fstream>
#include <nlohmann/json.hpp>

#include "server_process.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"

namespace moeflux::test {
namespace {

using ojson = nlohmann::ordered_json;

const ojson kTools = ojson::parse(R"([{"type": "function", "function": {"name": "get_verse",
  "description": "A verse of the bible", "parameters": {"type": "object", "properties":
  {"book": {"type": "string"}, "chapter": {"type": "integer"}}, "required": ["book"]}}}])");

const std::string kCall =
    "<tool_call>\n<function=get_verse>\n<parameter=book>\nGenesis\n</parameter>\n"
    "<parameter=chapter>\n1\n</parameter>\n</function>\n</tool_call>";

// The one tool call of a streamed reply, put together from its pieces.
struct StreamedCall {
  std::string id, name, arguments;
  size_t pieces = 0;
};

StreamedCall streamed_call(const std::string& sse) {
  StreamedCall c;
  for (size_t p = 0; (p = sse.find("data: ", p)) != std::string::npos;) {
    const size_t e = sse.find("\n\n", p);
    const std::string data = sse.substr(p + 6, e - p - 6);
    p = e;
    if (data == "[DONE]") break;
    const ojson chunk = ojson::parse(data);
    if (chunk["choices"].empty()) continue;
    for (const ojson& t : chunk["choices"][0]["delta"].value("tool_calls", ojson::array())) {
      EXPECT_EQ(t["index"], 0);
      if (c.pieces++ == 0) {
        c.id = t.at("id");
        EXPECT_EQ(t.at("type"), "function");
        c.name = t["function"].at("name");
      } else {
        EXPECT_FALSE(t.contains("id"));
        EXPECT_FALSE(t["function"].contains("name"));
      }
      c.arguments += t["function"]["arguments"].get<std::string>();
    }
  }
  return c;
}

class ServerJinjaHttp : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    const fs::path pkg = dir_->path() / "qwen35-template";
    fs::copy(bundled_model(), pkg, fs::copy_options::recursive);
    const fs::path config = pkg / "tokenizer" / "tokenizer_config.json";
    ojson c = ojson::parse(read_text(config.string()));
    template_text_ = read_text(fixture_dir("chat/qwen3_5.jinja"));
    c["chat_template"] = template_text_;
    std::ofstream(config) << c.dump(2);
    eos_ = c.at("eos_token").is_string() ? c.at("eos_token").get<std::string>() : "";
    tokenizer_ = new Tokenizer(Tokenizer::from_file((pkg / "tokenizer/tokenizer.json").string()));
    server_ =
        new ServerProcess({"--parallel", "2", "--ctx", "2048"}, pkg.string(), *dir_ / "server.err");
    ASSERT_GT(server_->port(), 0) << "the server did not start";
  }
  static void TearDownTestSuite() {
    delete server_;
    delete tokenizer_;
    delete dir_;
  }

  // The prompt's token count when the template renders `messages` with `tools`.
  static size_t template_tokens(const ojson& messages, const ojson& tools) {
    ChatRenderOptions o;
    if (!eos_.empty()) o.special_tokens["eos_token"] = eos_;
    const std::string text = ChatTemplate::parse(template_text_).render(messages, tools, o);
    return tokenizer_->encode(text).size();
  }

  static ojson post(const ojson& body, int* status = nullptr) {
    auto c = server_->client();
    auto r = c.Post("/v1/chat/completions", body.dump(), "application/json");
    if (!r) return {};
    if (status) *status = r->status;
    return body.value("stream", false) ? ojson(r->body) : ojson::parse(r->body, nullptr, false);
  }

  static TempDir* dir_;
  static ServerProcess* server_;
  static Tokenizer* tokenizer_;
  static std::string template_text_, eos_;
};
TempDir* ServerJinjaHttp::dir_ = nullptr;
ServerProcess* ServerJinjaHttp::server_ = nullptr;
Tokenizer* ServerJinjaHttp::tokenizer_ = nullptr;
std::string ServerJinjaHttp::template_text_, ServerJinjaHttp::eos_;

TEST_F(ServerJinjaHttp, SaysItRendersWithThePackagesTemplate) {
  // Printed before "listening on", which the server process waited for.
  EXPECT_NE(
      read_text(*dir_ / "server.err").find("[serve] chat prompts: the package's Jinja template\n"),
      std::string::npos)
      << read_text(*dir_ / "server.err");
}

TEST_F(ServerJinjaHttp, PromptsAreTheTemplatesRendering) {
  const ojson messages = ojson::parse(R"([{"role": "user", "content": "In the beginning"}])");
  for (const ojson& tools : {ojson(nullptr), kTools}) {
    ojson body = {{"messages", messages}, {"max_tokens", 1}, {"temperature", 0}};
    if (!tools.is_null()) body["tools"] = tools;
    const ojson r = post(body);
    ASSERT_TRUE(r.contains("usage")) << r.dump();
    EXPECT_EQ(r["usage"]["prompt_tokens"].get<size_t>(), template_tokens(messages, tools))
        << tools.dump();
  }
}

TEST_F(ServerJinjaHttp, TemplateRefusalsAre400WithItsMessage) {
  int status = 0;
  const ojson r = post({{"messages", ojson::parse(R"([{"role": "user", "content": "Hi"},
                                                     {"role": "system", "content": "late"}])")}},
                       &status);
  EXPECT_EQ(status, 400) << r.dump();
  EXPECT_NE(
      r["error"]["message"].get<std::string>().find("System message must be at the beginning"),
      std::string::npos)
      << r.dump();
  EXPECT_EQ(r["error"]["type"], "invalid_request_error");
}

TEST_F(ServerJinjaHttp, ToolCallsInTheTemplatesSyntaxRoundTrip) {
  // The reply continues an assistant message holding a call in Qwen3.5's syntax (the bundled
  // model does not write calls by itself).
  const ojson messages = ojson::array({{{"role", "user"}, {"content", "Read me Genesis 1."}},
                                       {{"role", "assistant"}, {"content", kCall}}});
  const ojson body = {{"messages", messages},
                      {"tools", kTools},
                      {"max_tokens", 1},
                      {"temperature", 0},
                      {"continue_final_message", true}};
  const ojson r = post(body);
  ASSERT_TRUE(r.contains("choices")) << r.dump();
  const ojson& msg = r["choices"][0]["message"];
  EXPECT_EQ(r["choices"][0]["finish_reason"], "tool_calls");
  ASSERT_EQ(msg["tool_calls"].size(), 1u) << r.dump();
  EXPECT_EQ(msg["tool_calls"][0]["function"]["name"], "get_verse");
  const std::string args = msg["tool_calls"][0]["function"]["arguments"];
  EXPECT_EQ(ojson::parse(args), ojson::parse(R"({"book": "Genesis", "chapter": 1})"));

  // Streamed: a first piece with id, type and name, then fragments that make the arguments.
  ojson sbody = body;
  sbody["stream"] = true;
  const StreamedCall s = streamed_call(post(sbody).get<std::string>());
  EXPECT_EQ(s.name, "get_verse");
  EXPECT_FALSE(s.id.empty());
  EXPECT_EQ(s.arguments, args);

  // The call and its result go back in: the template renders them (arguments as an object).
  ojson next = ojson::array({messages[0]});
  ojson call = msg;
  call["content"] = "";
  next.push_back(call);
  next.push_back({{"role", "tool"},
                  {"tool_call_id", msg["tool_calls"][0]["id"]},
                  {"content", "In the beginning God created the heaven and the earth."}});
  const ojson r2 = post({{"messages", next}, {"tools", kTools}, {"max_tokens", 1}});
  ASSERT_TRUE(r2.contains("usage")) << r2.dump();
  ojson rendered = next;
  rendered[1]["tool_calls"][0]["function"]["arguments"] = ojson::parse(args);
  EXPECT_EQ(r2["usage"]["prompt_tokens"].get<size_t>(), template_tokens(rendered, kTools));
}

TEST_F(ServerJinjaHttp, ACallCutShortStreamsItsLastPieceAtTheEnd) {
  // The continued message opens a call and writes one parameter; the reply (text that is not the
  // call's syntax) ends it: the call's first piece goes out at once, the closing brace at the end.
  const ojson messages = ojson::array(
      {{{"role", "user"}, {"content", "Genesis?"}},
       {{"role", "assistant"},
        {"content",
         "<tool_call>\n<function=get_verse>\n<parameter=book>\nGenesis\n</parameter>\n"}}});
  ojson body = {{"messages", messages},
                {"tools", kTools},
                {"max_tokens", 3},
                {"temperature", 0},
                {"continue_final_message", true}};
  const ojson r = post(body);
  ASSERT_TRUE(r.contains("choices")) << r.dump();
  const std::string args = r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"];
  EXPECT_EQ(args, R"({"book":"Genesis"})");
  body["stream"] = true;
  const StreamedCall s = streamed_call(post(body).get<std::string>());
  EXPECT_EQ(s.name, "get_verse");
  EXPECT_GE(s.pieces, 2u);
  EXPECT_EQ(s.arguments, args);
}

}  // namespace
}  // namespace moeflux::test
