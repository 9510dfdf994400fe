#include "server/http_server.hpp"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <random>
#include <thread>

#include "core/error.hpp"
#include "server/api_error.hpp"
#include "server/http_util.hpp"
#include "server/openai_json.hpp"
#include "server/output_parser.hpp"

namespace moeflux::server {

namespace {

using namespace std::chrono_literals;

void send_json(httplib::Response& res, int status, const Json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, Json::error_handler_t::replace), "application/json");
}

// Whether the prompt text leaves a <think> block open (the reply starts inside it).
bool opens_thought(std::string_view text, std::string_view open, std::string_view close) {
  if (open.empty() || close.empty()) return false;
  const size_t o = text.rfind(open);
  if (o == std::string_view::npos) return false;
  const size_t c = text.rfind(close);
  return c == std::string_view::npos || c < o;
}

}  // namespace

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(error_body(e).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                  "application/json");
}

HttpServer::HttpServer(Engine& engine, ServedModel model, ServerOptions opts)
    : engine_(engine), model_(std::move(model)), opts_(std::move(opts)) {
  MF_ASSERT(model_.tokenizer && model_.chat);
  scheduler_ = std::make_unique<Scheduler>(engine_, *model_.tokenizer, opts_.scheduler);
  http_ = std::make_unique<httplib::Server>();
  routes();
}

HttpServer::~HttpServer() {
  shutdown();
}

int HttpServer::bind() {
  // cpp-httplib 0.11 listens with a backlog of 5: a burst of connections (32 clients at once)
  // overflows it and the kernel resets some of them. Listening again on the bound socket
  // raises the backlog (Linux).
  int fd = -1;
  http_->set_socket_options([&fd](int sock) {
    httplib::default_socket_options(sock);
    fd = sock;
  });
  int port = opts_.port;
  if (opts_.port == 0) {
    port = http_->bind_to_any_port(opts_.host);
    if (port <= 0) fail("cannot listen on " + opts_.host + " (any port)");
  } else if (!http_->bind_to_port(opts_.host, opts_.port)) {
    fail("cannot listen on " + opts_.host + ":" + std::to_string(opts_.port) +
         " (in use, or not an address of this machine)");
  }
  http_->set_socket_options(httplib::default_socket_options);  // `fd` goes out of scope
  if (fd >= 0 && ::listen(fd, SOMAXCONN) != 0) throw_errno("listen");
  return port;
}

void HttpServer::serve() {
  http_->listen_after_bind();
}

void HttpServer::shutdown() {
  if (stopping_.exchange(true)) return;
  scheduler_->shutdown();  // running jobs end ("stop"); their handlers write the last events
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (in_flight_ > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  http_->stop();
}

void HttpServer::routes() {
  const int threads = std::max(1, opts_.http_threads);
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  http_->set_payload_max_length(opts_.max_body_bytes);
  http_->set_keep_alive_timeout(2);
  http_->set_read_timeout(30);

  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (stopping_) {
      send_error(res, ApiError(503, "the server is shutting down", "", "server_error"));
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!opts_.api_key.empty() && req.path != "/health" &&
        req.get_header_value("Authorization") != "Bearer " + opts_.api_key) {
      send_error(res, ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)", "",
                               "authentication_error", "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http_->set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404)
      send_error(res,
                 ApiError(404, "no route " + printable(req.method) + " " + printable(req.path, 200),
                          "", "invalid_request_error", "not_found"));
    else if (res.status == 413)
      send_error(res, ApiError(413, "the request body exceeds " +
                                        std::to_string(opts_.max_body_bytes) + " bytes"));
    else
      send_error(res, ApiError(res.status, "the request could not be served"));
  });
  http_->set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        send_error(res, ApiError(500, what, "", "server_error"));
      });

  http_->Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, health_json(scheduler_->stats(), opts_.model_id));
  });
  http_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, models_json(opts_.model_id));
  });
  http_->Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] != opts_.model_id)
      return send_error(res, ApiError(404, "no model " + printable(req.matches[1].str()), "model",
                                      "invalid_request_error", "model_not_found"));
    send_json(res, 200, models_json(opts_.model_id)["data"][0]);
  });
  for (const bool chat : {true, false})
    http_->Post(chat ? "/v1/chat/completions" : "/v1/completions",
                [this, chat](const httplib::Request& req, httplib::Response& res) {
                  ++in_flight_;
                  try {
                    generate(req, res, chat);
                  } catch (const ApiError& e) {
                    send_error(res, e);
                    --in_flight_;
                  } catch (const std::exception& e) {
                    send_error(res, ApiError(500, e.what(), "", "server_error"));
                    --in_flight_;
                  }
                });
}

std::shared_ptr<Job> HttpServer::make_job(const GenerationRequest& g, std::string* prefill) {
  const Tokenizer& tok = *model_.tokenizer;
  JobParams p;
  if (g.chat) {
    TemplateOptions to;
    to.enable_thinking = g.enable_thinking;
    to.continue_final_message = g.continue_final_message;
    const Json none = Json::array();
    Prompt prompt = model_.chat->render(g.messages, g.tool_choice == "none" ? none : g.tools, to);
    *prefill = std::move(prompt.continued);  // a suffix of the text
    const std::string_view before(prompt.text.data(), prompt.text.size() - prefill->size());
    p.starts_in_reasoning =
        opens_thought(before, model_.chat->think_open(), model_.chat->think_close());
    p.prompt = tok.encode(prompt.text);
  } else if (!g.prompt_ids.empty()) {
    for (size_t i = 0; i < g.prompt_ids.size(); ++i)
      if (g.prompt_ids[i] >= int(tok.vocab_size()))
        bad_field("prompt[" + std::to_string(i) + "]", "token id out of the vocabulary");
    p.prompt = g.prompt_ids;
  } else {
    p.prompt = tok.encode(g.prompt);
  }
  if (p.prompt.empty()) bad_field(g.chat ? "messages" : "prompt", "the prompt is empty");
  const size_t ctx = scheduler_->context();
  const size_t most =
      opts_.max_prompt_tokens ? std::min(opts_.max_prompt_tokens, ctx - 1) : ctx - 1;
  if (p.prompt.size() > most)
    throw ApiError(400,
                   "the prompt has " + std::to_string(p.prompt.size()) + " tokens, more than the " +
                       std::to_string(most) + " this server takes",
                   g.chat ? "messages" : "prompt", "invalid_request_error",
                   "context_length_exceeded");
  p.sampling = model_.sampling;
  if (g.temperature) p.sampling.temperature = *g.temperature;
  if (g.top_p) p.sampling.top_p = *g.top_p;
  if (g.min_p) p.sampling.min_p = *g.min_p;
  if (g.top_k) p.sampling.top_k = *g.top_k;
  if (g.presence_penalty) p.sampling.presence_penalty = *g.presence_penalty;
  if (g.repetition_penalty) p.sampling.repetition_penalty = *g.repetition_penalty;
  p.sampling.seed = g.seed ? *g.seed : std::random_device{}();
  try {
    p.sampling.validate();
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }
  p.max_tokens = int(std::min<size_t>(size_t(g.max_tokens), ctx - p.prompt.size()));
  p.stop = g.stop;
  p.end_tokens = model_.end_tokens;
  p.ignore_eos = g.ignore_eos;
  p.think_open_id = model_.think_open_id;
  p.think_close_id = model_.think_close_id;
  if (g.think_budget) {
    if (!p.think_open_id || !p.think_close_id)
      bad_field("think_budget", "the model has no thinking tokens");
    p.think_budget = *g.think_budget;
  }
  return std::make_shared<Job>(std::move(p));
}

}  // namespace moeflux::server
