// moeflux serve: the OpenAI-compatible HTTP front of a Scheduler (cpp-httplib).
//
// Routes: POST /v1/chat/completions, POST /v1/completions (each streamed as server-sent events
// with "stream": true), GET /v1/models, GET /v1/models/{id}, GET /health (status and scheduler
// counters). Every error is an OpenAI error object with a 4xx/5xx status: malformed or invalid
// requests 400, a missing or wrong key 401, unknown routes 404, a body over the limit 413, a full
// queue 429, shutting down 503.
//
// A request is turned into a Job (prompt ids, sampling, limits) here; the scheduler runs it.
// A client that disconnects cancels its job (a streamed reply notices at its next write; a
// waiting non-streamed one within one poll interval, by the socket closing). shutdown() stops
// accepting requests, lets every running job end cleanly (finish_reason "stop" and [DONE] for
// streams) and returns when the listener has stopped.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/session.hpp"
#include "sample/sampler.hpp"
#include "server/chat_template.hpp"
#include "server/request.hpp"
#include "server/scheduler.hpp"
#include "text/tokenizer.hpp"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace moeflux::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;       // 0: any free port (bound_port() says which)
  std::string api_key;   // empty: no authentication
  std::string model_id;  // the id /v1/models lists and responses carry
  size_t max_body_bytes = 8u << 20;
  size_t max_prompt_tokens = 0;  // 0: the context
  RequestLimits limits;
  SchedulerOptions scheduler;
  int http_threads = 64;  // connections served at once
};

// What the server needs of the model besides the engine.
struct ServedModel {
  const Tokenizer* tokenizer = nullptr;
  std::vector<int> end_tokens;
  const ChatTemplate* chat = nullptr;
  SamplerOptions sampling;  // defaults for fields a request leaves out (seed: per request)
  std::optional<int> think_open_id, think_close_id;
};

class HttpServer {
 public:
  HttpServer(Engine& engine, ServedModel model, ServerOptions opts);
  ~HttpServer();

  // Binds the listening socket; returns the port. Throws moeflux::Error when it cannot.
  int bind();
  // Serves until shutdown() (from another thread or a signal watcher).
  void serve();
  void shutdown();

  SchedulerStats stats() const { return scheduler_->stats(); }

 private:
  void routes();
  // POST /v1/chat/completions (chat) and /v1/completions (http_generate.cpp).
  void generate(const httplib::Request& req, httplib::Response& res, bool chat);
  // The job of a validated request (prompt rendered and tokenized, limits applied); *prefill
  // receives the text of a continued final message. Throws ApiError.
  std::shared_ptr<Job> make_job(const GenerationRequest& g, std::string* prefill);
  Engine& engine_;
  ServedModel model_;
  ServerOptions opts_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<httplib::Server> http_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> next_id_{1};
  std::atomic<int> in_flight_{0};
};

}  // namespace moeflux::server
