// moeflux bench-batch: batched decode across sessions (eval_batch), as `moeflux serve` runs
// concurrent requests: for each batch size N, N sessions on one fresh engine evaluate their own
// random prompt, then decode --gen-len steps together, greedily. Reports aggregate decode tok/s
// and the expert bytes per generated token that compute used and that were read from storage:
// each MoE layer fetches the union of the N sessions' experts once per step, so the bytes per
// token fall as N grows while the sessions' choices overlap.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "commands.hpp"
#include "core/argmax.hpp"
#include "core/error.hpp"
#include "engine_options.hpp"
#include "model_dir.hpp"

namespace moeflux::tool {

namespace {

using Clock = std::chrono::steady_clock;

Runner add_bench_batch(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench-batch", "Batched decode of N sessions together: aggregate tok/s, expert bytes/token");
  struct Args {
    std::string model, sizes = "1,2,4,8";
    int prompt_len = 32, gen_len = 32;
    uint64_t seed = 1;
    EngineArgs engine;
  };
  auto a = std::make_shared<Args>();
  add_model_option(cmd, &a->model);
  cmd->add_option("--sessions", a->sizes, "Batch sizes to measure (default 1,2,4,8)");
  cmd->add_option("--prompt-len", a->prompt_len, "Prompt tokens per session (default 32)")
      ->check(integer_range(1, 1 << 20));
  cmd->add_option("--gen-len", a->gen_len, "Decode steps (default 32)")
      ->check(integer_range(1, 1 << 20));
  cmd->add_option("--seed", a->seed, "Seed of the random prompts (default 1)");
  add_engine_options(cmd, &a->engine);
  return [a] {
    const std::vector<int> sizes = parse_int_list(a->sizes, "--sessions");
    EngineOptions opts = a->engine.to_options();
    for (int n : sizes)
      if (n < 1 || (opts.prefill_chunk > 0 && size_t(n) > opts.prefill_chunk))
        usage_fail("--sessions: " + std::to_string(n) + " is not within 1 and --prefill-chunk");
    auto model =
        Model::open(resolve_model_dir(a->model), {.verify_resident = !a->engine.no_verify});
    check_engine_options(opts, model->package());
    const ModelConfig& c = model->config();
    if (a->prompt_len + a->gen_len > c.max_position_embeddings)
      usage_fail("--prompt-len + --gen-len exceed the model's context");
    if (opts.context == 0) opts.context = size_t(a->prompt_len + a->gen_len);
    std::printf("%8s %14s %18s %18s %12s\n", "sessions", "decode tok/s", "expert MiB/token",
                "storage MiB/token", "step ms");
    for (int n : sizes) {
      Engine engine(*model, opts);  // cold cache for every size
      std::mt19937_64 rng(a->seed);
      std::uniform_int_distribution<int> id(0, c.vocab_size - 1);
      std::vector<std::unique_ptr<Session>> sessions;
      std::vector<Session*> ptrs;
      for (int i = 0; i < n; ++i) {
        sessions.push_back(std::make_unique<Session>(engine));
        std::vector<int> prompt(a->prompt_len);
        for (int& t : prompt) t = id(rng);
        sessions.back()->eval_prompt(prompt);
        ptrs.push_back(sessions.back().get());
      }
      ExpertStreamer& st = engine.streamer();
      st.reset_stats();
      std::vector<int> next(n);
      const auto t0 = Clock::now();
      for (int g = 0; g < a->gen_len; ++g) {
        for (int i = 0; i < n; ++i) {
          const std::vector<float>& l = ptrs[i]->logits();
          next[i] = int(argmax(l));
        }
        eval_batch(ptrs, next);
      }
      const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      const double tokens = double(n) * a->gen_len, rb = double(st.record_bytes());
      std::printf("%8d %14.2f %18.3f %18.3f %12.2f\n", n, tokens / secs,
                  double(st.stats().total().requests) * rb / tokens / 1048576.0,
                  double(st.stats().storage_reads) * rb / tokens / 1048576.0,
                  1e3 * secs / a->gen_len);
      std::fflush(stdout);
    }
    return 0;
  };
}

const CommandRegistration registration(61, add_bench_batch);

}  // namespace

}  // namespace moeflux::tool
