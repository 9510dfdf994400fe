#include <chrono>
#include <cstdio>

#include "commands.hpp"
#include "engine_options.hpp"
#include "core/error.hpp"
#include "formats/npy.hpp"
#include "runtime/session.hpp"

namespace moeflux::tool {

namespace {

Runner add_logits(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "logits", "Evaluate token ids in order; write float32 logits [n_tokens, vocab] as .npy");
  struct Args {
    std::string model, tokens, out;
    EngineArgs engine;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("-m,--model", a->model, "Package directory")->required();
  cmd->add_option("--tokens", a->tokens, "Comma-separated token ids, e.g. 1,2,3")->required();
  cmd->add_option("--out", a->out, "Output .npy file")->required();
  add_engine_options(cmd, &a->engine);
  return [a] {
    const std::vector<int> tokens = parse_int_list(a->tokens, "--tokens");
    auto model = Model::open(a->model);
    const ModelConfig& c = model->config();
    for (int t : tokens)
      if (t >= c.vocab_size)
        fail("--tokens: token id " + std::to_string(t) + " is out of range (vocabulary size " +
             std::to_string(c.vocab_size) + ")");
    Session session(*model, a->engine.to_options());
    std::vector<float> all;
    const auto t0 = std::chrono::steady_clock::now();
    session.eval_prompt(tokens, &all);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    write_npy_f32(a->out, {tokens.size(), size_t(c.vocab_size)}, all.data());
    std::fprintf(stderr, "[logits] %zu tokens in %.3f s (%.1f tok/s), K=%d; wrote %s\n",
                 tokens.size(), sec, tokens.size() / sec, session.active_experts(), a->out.c_str());
    std::fprintf(stderr, "[logits] %s\n", streaming_summary(session, sec, tokens.size()).c_str());
    if (a->engine.timing) print_timings(session);
    return 0;
  };
}

const CommandRegistration registration(30, add_logits);

}  // namespace

}  // namespace moeflux::tool
