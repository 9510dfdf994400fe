// moeflux serve: the OpenAI-compatible HTTP server (src/server/http_server.hpp, docs/SERVER.md).
//
// Loopback by default. SIGTERM or SIGINT shut it down gracefully: no new requests, running
// replies end (streams with finish_reason "stop" and [DONE]), then the process exits 0. A
// second signal ends it at once. Prints "listening on http://HOST:PORT" on stdout once the
// socket is bound (--port 0 picks a free port), then a line per request count on stderr.
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "commands.hpp"
#include "core/error.hpp"
#include "engine_options.hpp"
#include "model_dir.hpp"
#include "server/http_server.hpp"
#include "server/jinja_chat_template.hpp"
#include "text_model.hpp"

namespace moeflux::tool {

namespace {

volatile std::sig_atomic_t g_stop = 0;

extern "C" void on_stop_signal(int sig) {
  if (g_stop) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
  g_stop = 1;
}

// The package's own Jinja template when it has one (`format` renders it, for tools the template
// does not write), else the hand-written `format`.
std::unique_ptr<server::ChatTemplate> served_chat_template(const TextModel& tm,
                                                           std::unique_ptr<ChatFormat> format) {
  const ChatTemplates templates = tm.chat_templates();
  if (templates.empty()) return server::chat_template_from_format(std::move(format));
  try {
    return server::chat_template_from_jinja(templates, tm.chat_render_options(),
                                            server::chat_template_from_format(std::move(format)));
  } catch (const Error& e) {
    fail(tm.dir + ": the package's chat template: " + e.what());
  }
}

Runner add_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (chat, completions)");
  struct Args {
    std::string model, host = "127.0.0.1", api_key, model_id;
    int port = 8080, parallel = 4, max_tokens = 4096, n = 1024;
    size_t queue = 64, max_body = 8u << 20, max_prompt = 0;
    std::string checkpoint_mem = "256M";
    EngineArgs engine;
    SamplerArgs sampling;
  };
  auto a = std::make_shared<Args>();
  add_model_option(cmd, &a->model);
  cmd->add_option("--host", a->host, "Address to listen on (default 127.0.0.1: this machine only)");
  cmd->add_option("--port", a->port, "Port (default 8080; 0: any free port)")
      ->check(integer_range(0, 65535));
  cmd->add_option("--api-key", a->api_key,
                  "Require Authorization: Bearer KEY on every route but /health");
  cmd->add_option("--parallel", a->parallel,
                  "Requests decoded together in one batch (slots; default 4)")
      ->check(integer_range(1, 256));
  cmd->add_option("--queue", a->queue,
                  "Requests waiting for a slot at most (default 64; more: 429)")
      ->check(integer_range(0, 1 << 20));
  cmd->add_option("--max-body", a->max_body,
                  "Request body bytes at most (default 8 MiB; more: 413)")
      ->check(integer_range(1, 1ll << 32));
  cmd->add_option("--max-prompt-tokens", a->max_prompt,
                  "Prompt tokens at most (default: the context; more: 400)")
      ->check(integer_range(0, 1 << 30));
  cmd->add_option("--max-tokens", a->max_tokens, "max_tokens a request may ask for (default 4096)")
      ->check(integer_range(1, 1 << 30));
  cmd->add_option("-n,--n-predict", a->n, "max_tokens of a request that names none (default 1024)")
      ->check(integer_range(1, 1 << 30));
  cmd->add_option("--checkpoint-mem", a->checkpoint_mem,
                  "Position checkpoints per slot, bytes at most (default 256M)");
  cmd->add_option("--model-id", a->model_id, "Model id in /v1/models (default: the package name)");
  add_sampler_options(cmd, &a->sampling);
  add_engine_options(cmd, &a->engine);
  return [a] {
    const EngineOptions engine_opts = a->engine.to_options();
    a->sampling.check();
    if (a->n > a->max_tokens) usage_fail("-n " + std::to_string(a->n) + " exceeds --max-tokens");
    if (engine_opts.prefill_chunk > 0 && size_t(a->parallel) > engine_opts.prefill_chunk)
      usage_fail("--parallel " + std::to_string(a->parallel) + " exceeds --prefill-chunk " +
                 std::to_string(engine_opts.prefill_chunk) + " (rows of one forward pass)");
    size_t checkpoint_bytes = 0;
    try {
      checkpoint_bytes = parse_byte_size(a->checkpoint_mem, "--checkpoint-mem");
    } catch (const Error& e) {
      usage_fail(e.what());
    }
    const TextModel tm = TextModel::open(a->model, !a->engine.no_verify);
    check_engine_options(engine_opts, tm.model->package());
    std::unique_ptr<ChatFormat> format = tm.chat_format();
    const GenerateOptions go = tm.generate_options(1, {}, -1, format.get());
    const std::unique_ptr<server::ChatTemplate> chat = served_chat_template(tm, std::move(format));
    Engine engine(*tm.model, engine_opts);

    server::ServedModel m;
    m.tokenizer = tm.tokenizer.get();
    m.end_tokens = tm.end_tokens;
    m.chat = chat.get();
    m.sampling = a->sampling.resolve(tm);
    m.think_open_id = go.think_open_id;
    m.think_close_id = go.think_close_id;
    server::ServerOptions so;
    so.host = a->host;
    so.port = a->port;
    so.api_key = a->api_key;
    so.model_id = a->model_id.empty()
                      ? std::filesystem::path(tm.dir).lexically_normal().filename().string()
                      : a->model_id;
    if (so.model_id.empty()) so.model_id = std::filesystem::path(tm.dir).parent_path().filename();
    so.max_body_bytes = a->max_body;
    so.max_prompt_tokens = a->max_prompt;
    so.limits.max_tokens = a->max_tokens;
    so.limits.default_max_tokens = a->n;
    so.scheduler.parallel = a->parallel;
    so.scheduler.queue_limit = a->queue;
    so.scheduler.checkpoint_bytes = checkpoint_bytes;
    server::HttpServer server(engine, std::move(m), so);
    const int port = server.bind();

    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    std::signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error return, not a signal
    std::thread watcher([&server] {
      while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::fprintf(stderr, "[serve] shutting down: running replies end, new requests get 503\n");
      server.shutdown();
    });
    std::fprintf(stderr, "[serve] %s on http://%s:%d, %d slots, context %zu%s\n", tm.dir.c_str(),
                 a->host.c_str(), port, a->parallel, engine.context(),
                 a->api_key.empty() ? "" : ", API key required");
    std::fprintf(stderr, "[serve] chat prompts: %s\n", std::string(chat->name()).c_str());
    std::printf("listening on http://%s:%d\n", a->host.c_str(), port);
    std::fflush(stdout);
    server.serve();
    g_stop = 1;
    watcher.join();
    const server::SchedulerStats st = server.stats();
    std::fprintf(stderr,
                 "[serve] stopped: %llu requests completed, %llu cancelled, %llu failed; %llu "
                 "tokens generated\n",
                 (unsigned long long)st.completed, (unsigned long long)st.cancelled,
                 (unsigned long long)st.failed, (unsigned long long)st.generated_tokens);
    return 0;
  };
}

const CommandRegistration registration(47, add_serve);

}  // namespace

}  // namespace moeflux::tool
