#include <chrono>
#include <cstdio>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/finite.hpp"
#include "core/output_file.hpp"
#include "engine_options.hpp"
#include "experts/routing_trace.hpp"
#include "formats/npy.hpp"
#include "model_dir.hpp"
#include "runtime/session.hpp"

namespace moeflux::tool {

namespace {

Runner add_logits(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "logits", "Evaluate token ids in order; write float32 logits [n_tokens, vocab] as .npy");
  struct Args {
    std::string model, tokens, out, trace;
    EngineArgs engine;
  };
  auto a = std::make_shared<Args>();
  add_model_option(cmd, &a->model);
  cmd->add_option("--tokens", a->tokens, "Comma-separated token ids, e.g. 1,2,3")->required();
  cmd->add_option("--out", a->out, "Output .npy file")->required();
  cmd->add_option("--routing-trace", a->trace,
                  "Also write the experts each token chose, per layer (JSONL)");
  add_engine_options(cmd, &a->engine);
  return [a] {
    const std::vector<int> tokens = parse_int_list(a->tokens, "--tokens");
    EngineOptions opts = a->engine.to_options();
    check_output_path(a->out, "--out");
    if (!a->trace.empty()) check_output_path(a->trace, "--routing-trace");
    auto model =
        Model::open(resolve_model_dir(a->model), {.verify_resident = !a->engine.no_verify});
    check_engine_options(opts, model->package());
    const ModelConfig& c = model->config();
    for (int t : tokens)
      if (t >= c.vocab_size)
        usage_fail("--tokens: token id " + std::to_string(t) +
                   " is out of range (vocabulary size " + std::to_string(c.vocab_size) + ")");
    RoutingTrace trace;
    trace.num_layers = c.num_layers;
    trace.num_experts = c.num_experts;
    trace.tokens.assign(tokens.size(), std::vector<std::vector<int>>(c.num_layers));
    if (!a->trace.empty())
      opts.on_routing = [&](int layer, int first_pos, const std::vector<RoutingRecord>& routes) {
        for (size_t i = 0; i < routes.size(); ++i)
          trace.tokens[first_pos + i][layer] = routes[i].experts;
      };
    Session session(*model, opts);
    trace.top_k = session.active_experts();
    std::vector<float> all;
    const auto t0 = std::chrono::steady_clock::now();
    session.eval_prompt(tokens, &all);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    require_finite_logits(all, size_t(c.vocab_size), 0, model->package().dir());
    write_npy_f32(a->out, {tokens.size(), size_t(c.vocab_size)}, all.data());
    std::fprintf(stderr, "[logits] %zu tokens in %.3f s (%.1f tok/s), K=%d; wrote %s\n",
                 tokens.size(), sec, tokens.size() / sec, session.active_experts(), a->out.c_str());
    std::fprintf(stderr, "[logits] %s\n", streaming_summary(session, sec, tokens.size()).c_str());
    if (a->engine.timing) print_timings(session);
    if (!a->trace.empty()) trace.save(a->trace, "--routing-trace");
    return 0;
  };
}

const CommandRegistration registration(30, add_logits);

}  // namespace

}  // namespace moeflux::tool
