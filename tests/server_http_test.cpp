// `moeflux serve` over HTTP (raw requests through cpp-httplib's client and a bare socket):
// every bad request gets a 4xx with an OpenAI error object and the server keeps serving; replies
// (plain and streamed) agree; a follow-up reuses the cached prefix; a client that disconnects
// cancels its reply; 32 clients at once; the queue limit; the API key; SIGTERM ends streams
// cleanly; a short soak.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <mutex>
#include <nlohmann/json.hpp>

#include "server_process.hpp"

namespace moeflux::test {
namespace {

using nlohmann::json;

json chat_body(const std::string& user, int max_tokens, bool stream = false) {
  return {{"model", "moeflux-tiny-kjv"},
          {"messages", json::array({{{"role", "user"}, {"content", user}}})},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"stream", stream}};
}

httplib::Result post(httplib::Client& c, const std::string& path, const std::string& body) {
  return c.Post(path, body, "application/json");
}

// Status and error object of a request that must fail.
void expect_error(const httplib::Result& r, int status, const std::string& type = "") {
  ASSERT_TRUE(r) << "no response";
  EXPECT_EQ(r->status, status) << r->body;
  const json j = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(j.is_object() && j.contains("error")) << r->body;
  EXPECT_TRUE(j["error"]["message"].is_string()) << r->body;
  EXPECT_TRUE(j["error"].contains("param") && j["error"].contains("code")) << r->body;
  if (!type.empty()) {
    EXPECT_EQ(j["error"]["type"], type) << r->body;
  }
}

// The data lines of an SSE body, [DONE] last.
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> out;
  size_t p = 0;
  while ((p = body.find("data: ", p)) != std::string::npos) {
    const size_t e = body.find("\n\n", p);
    out.push_back(body.substr(p + 6, e - p - 6));
    p = e;
  }
  return out;
}

class ServerHttp : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({"--parallel", "4", "--max-body", "65536", "--max-prompt-tokens",
                                 "400", "--max-tokens", "3000", "--ctx", "1024"});
    ASSERT_GT(server_->port(), 0) << "the server did not start";
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static json health() {
    auto c = server_->client();
    auto r = c.Get("/health");
    return r && r->status == 200 ? json::parse(r->body) : json();
  }
  static ServerProcess* server_;
};
ServerProcess* ServerHttp::server_ = nullptr;

TEST_F(ServerHttp, BadRequestsGet4xxWithErrorObjects) {
  auto c = server_->client();
  expect_error(post(c, "/v1/chat/completions", "{not json"), 400, "invalid_request_error");
  expect_error(post(c, "/v1/chat/completions", "[]"), 400);
  expect_error(post(c, "/v1/chat/completions", R"({"messages": 3})"), 400);
  expect_error(
      post(c, "/v1/chat/completions", R"({"messages": [{"role": "user", "content": {}}]})"), 400);
  json b = chat_body("hi", 5);
  b["temperature"] = "warm";
  expect_error(post(c, "/v1/chat/completions", b.dump()), 400);
  b = chat_body("hi", 5000);
  expect_error(post(c, "/v1/chat/completions", b.dump()), 400);
  expect_error(post(c, "/v1/completions", R"({"prompt": ""})"), 400);
  expect_error(post(c, "/v1/completions", R"({"prompt": [99999999]})"), 400);
  // A prompt over --max-prompt-tokens.
  std::string long_text;
  for (int i = 0; i < 300; ++i) long_text += "and it came to pass ";
  const auto r = post(c, "/v1/chat/completions", chat_body(long_text, 5).dump());
  expect_error(r, 400);
  EXPECT_NE(r->body.find("context_length_exceeded"), std::string::npos);
  // A body over --max-body.
  expect_error(post(c, "/v1/chat/completions", chat_body(std::string(100000, 'a'), 5).dump()), 413);
  // Unknown routes and methods.
  expect_error(c.Get("/v1/nothing"), 404);
  expect_error(c.Get("/v1/chat/completions"), 404);
  expect_error(c.Get("/v1/models/other"), 404);
  expect_error(post(c, "/", "{}"), 404);
  // Still serving.
  EXPECT_EQ(health()["status"], "ok");
}

TEST_F(ServerHttp, ModelsAndHealth) {
  auto c = server_->client();
  auto r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  const json m = json::parse(r->body);
  EXPECT_EQ(m["object"], "list");
  EXPECT_EQ(m["data"][0]["id"], "moeflux-tiny-kjv");
  r = c.Get("/v1/models/moeflux-tiny-kjv");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(health()["slots"], 4);
}

TEST_F(ServerHttp, StreamedAndPlainRepliesAgree) {
  auto c = server_->client();
  const std::string user = "In the beginning";
  auto r = post(c, "/v1/chat/completions", chat_body(user, 12).dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "chat.completion");
  const std::string text = j["choices"][0]["message"]["content"];
  const std::string finish = j["choices"][0]["finish_reason"];
  EXPECT_TRUE(finish == "stop" || finish == "length") << finish;
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(j["usage"]["total_tokens"].get<int>(),
            j["usage"]["prompt_tokens"].get<int>() + j["usage"]["completion_tokens"].get<int>());

  json b = chat_body(user, 12, true);
  b["stream_options"] = {{"include_usage", true}};
  r = post(c, "/v1/chat/completions", b.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  const auto events = sse_events(r->body);
  ASSERT_GE(events.size(), 3u) << r->body;
  EXPECT_EQ(events.back(), "[DONE]");
  std::string streamed, streamed_finish;
  bool usage = false;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    if (e.contains("usage")) {
      usage = true;
      EXPECT_EQ(e["usage"]["completion_tokens"], j["usage"]["completion_tokens"]);
      continue;
    }
    const json& ch = e["choices"][0];
    if (ch["delta"].contains("content")) streamed += ch["delta"]["content"].get<std::string>();
    if (!ch["finish_reason"].is_null()) streamed_finish = ch["finish_reason"];
  }
  EXPECT_TRUE(usage);
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(streamed_finish, finish);
}

TEST_F(ServerHttp, CompletionsStopStringsAndSeeds) {
  auto c = server_->client();
  json b = {{"prompt", "And God said"}, {"max_tokens", 40}, {"temperature", 0.9}, {"seed", 7}};
  auto r1 = post(c, "/v1/completions", b.dump());
  auto r2 = post(c, "/v1/completions", b.dump());
  ASSERT_TRUE(r1 && r2);
  ASSERT_EQ(r1->status, 200) << r1->body;
  const json j1 = json::parse(r1->body), j2 = json::parse(r2->body);
  EXPECT_EQ(j1["object"], "text_completion");
  const std::string text = j1["choices"][0]["text"];
  EXPECT_EQ(text, j2["choices"][0]["text"]) << "same seed, other text";
  ASSERT_GE(text.size(), 4u);
  // Stop at a string the reply contains: the text before it, finish_reason "stop".
  const std::string stop = text.substr(text.size() / 2, 3);
  b["stop"] = stop;
  auto r3 = post(c, "/v1/completions", b.dump());
  ASSERT_TRUE(r3);
  const json j3 = json::parse(r3->body);
  EXPECT_EQ(j3["choices"][0]["text"], text.substr(0, text.find(stop)));
  EXPECT_EQ(j3["choices"][0]["finish_reason"], "stop");
}

TEST_F(ServerHttp, AFollowUpTurnReusesTheCachedPrefix) {
  auto c = server_->client();
  json b = chat_body("Who made the heaven and the earth?", 8);
  auto r = post(c, "/v1/chat/completions", b.dump());
  ASSERT_TRUE(r && r->status == 200);
  const json first = json::parse(r->body);
  b["messages"].push_back(
      {{"role", "assistant"}, {"content", first["choices"][0]["message"]["content"]}});
  b["messages"].push_back({{"role", "user"}, {"content", "And then?"}});
  r = post(c, "/v1/chat/completions", b.dump());
  ASSERT_TRUE(r && r->status == 200);
  const json second = json::parse(r->body);
  EXPECT_GE(second["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(),
            first["usage"]["prompt_tokens"].get<int>())
      << second.dump();
}

int connect_loopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return -1;
  return fd;
}

// A raw connection streaming a long reply (ignore_eos): returns the socket once a content delta
// arrived (it is generating), with the bytes read so far in *got; -1 on failure.
int open_long_stream(int port, const std::string& user, int max_tokens, std::string* got) {
  json b = chat_body(user, max_tokens, true);
  b["ignore_eos"] = true;
  const std::string body = b.dump();
  const std::string req =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
      "application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  const int fd = connect_loopback(port);
  if (fd < 0) return -1;
  if (::write(fd, req.data(), req.size()) != ssize_t(req.size())) return ::close(fd), -1;
  char buf[4096];
  while (got->find("\"content\"") == std::string::npos) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return ::close(fd), -1;
    got->append(buf, size_t(n));
  }
  return fd;
}

TEST_F(ServerHttp, ADisconnectMidStreamCancelsTheReply) {
  const uint64_t before = health()["requests"]["cancelled"];
  std::string got;
  const int fd = open_long_stream(server_->port(), "Let there be light", 2500, &got);
  ASSERT_GE(fd, 0);
  ::close(fd);
  bool cancelled = false;
  for (int i = 0; i < 200 && !cancelled; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const json h = health();
    cancelled = h["requests"]["cancelled"].get<uint64_t>() > before && h["active"] == 0;
  }
  EXPECT_TRUE(cancelled) << health().dump();
}

TEST_F(ServerHttp, ThirtyTwoClientsAtOnce) {
  std::atomic<int> ok{0};
  std::mutex mu;
  std::string failures;
  std::vector<std::thread> threads;
  for (int i = 0; i < 32; ++i)
    threads.emplace_back([&, i] {
      auto c = server_->client();
      const auto r = post(c, "/v1/chat/completions",
                          chat_body("Verse " + std::to_string(i), 6, i % 2 == 0).dump());
      if (r && r->status == 200) {
        ++ok;
      } else {
        std::lock_guard<std::mutex> lock(mu);
        failures += (r ? std::to_string(r->status) + " " + r->body
                       : "no response: " + httplib::to_string(r.error())) +
                    (i % 2 == 0 ? " stream" : " plain") + "\n";
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 32) << failures;
  const json h = health();
  EXPECT_GT(h["decode"]["rows"].get<uint64_t>(), h["decode"]["steps"].get<uint64_t>())
      << "no decode step batched two requests: " << h.dump();
}

TEST_F(ServerHttp, ShortSoak) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(4);
  std::atomic<int> bad{0}, done{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      auto c = server_->client();
      for (int i = 0; std::chrono::steady_clock::now() < end; ++i) {
        const int kind = (t + i) % 4;
        httplib::Result r =
            kind == 0   ? post(c, "/v1/chat/completions", chat_body("soak", 4, i % 2).dump())
            : kind == 1 ? post(c, "/v1/completions", R"({"prompt": "The", "max_tokens": 3})")
            : kind == 2 ? post(c, "/v1/chat/completions", "{\"messages\": [")
                        : c.Get("/health");
        const int want = kind == 2 ? 400 : 200;
        if (!r || r->status != want) ++bad;
        ++done;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(done.load(), 8);
  const json h = health();
  EXPECT_EQ(h["requests"]["failed"], 0);
  EXPECT_EQ(h["active"], 0);
}

TEST(ServerLimits, ApiKeyAndQueueLimit) {
  ServerProcess s({"--api-key", "sekrit", "--parallel", "1", "--queue", "1", "--ctx", "4096"});
  ASSERT_GT(s.port(), 0);
  auto c = s.client();
  expect_error(post(c, "/v1/chat/completions", chat_body("hi", 2).dump()), 401,
               "authentication_error");
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  c.set_bearer_token_auth("wrong");
  expect_error(c.Get("/v1/models"), 401);
  c.set_bearer_token_auth("sekrit");
  auto r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  // One slot, one waiting: of four long requests at once, some are turned away with 429.
  std::atomic<int> ok{0}, busy{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      auto k = s.client();
      k.set_bearer_token_auth("sekrit");
      json b = chat_body("Long", 200);
      b["ignore_eos"] = true;
      const auto x = post(k, "/v1/chat/completions", b.dump());
      if (x && x->status == 200) ++ok;
      if (x && x->status == 429) {
        ++busy;
        EXPECT_NE(x->body.find("\"error\""), std::string::npos);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_GE(ok.load(), 1);
  EXPECT_GE(busy.load(), 1);
  EXPECT_EQ(ok + busy, 4);
}

TEST(ServerShutdown, SigtermEndsARunningStreamCleanly) {
  ServerProcess s({"--parallel", "2"});
  ASSERT_GT(s.port(), 0);
  // A raw connection: the stream's bytes as they come, until the server closes it.
  std::string body;
  const int fd = open_long_stream(s.port(), "Long", 3000, &body);
  ASSERT_GE(fd, 0);
  char buf[4096];
  std::thread reader([&] {
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) body.append(buf, size_t(n));
  });
  EXPECT_EQ(s.terminate(), 0);
  reader.join();
  ::close(fd);
  const auto events = sse_events(body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json last = json::parse(events[events.size() - 2]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
}

}  // namespace
}  // namespace moeflux::test
