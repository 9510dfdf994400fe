#include <chrono>
#include <cstdio>

#include "commands.hpp"
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
    EngineOptions engine;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("-m,--model", a->model, "Package directory")->required();
  cmd->add_option("--tokens", a->tokens, "Comma-separated token ids, e.g. 1,2,3")->required();
  cmd->add_option("--out", a->out, "Output .npy file")->required();
  cmd->add_option("-t,--threads", a->engine.threads, "Compute threads (default: all)");
  cmd->add_option("--io-threads", a->engine.io_threads, "Expert reads in flight (default 8)")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--k", a->engine.active_experts, "Experts per token (default: the model's top-k)")
      ->check(CLI::Range(1, 1 << 20));
  return [a] {
    const std::vector<int> tokens = parse_int_list(a->tokens, "--tokens");
    auto model = Model::open(a->model);
    const ModelConfig& c = model->config();
    for (int t : tokens)
      if (t >= c.vocab_size)
        fail("--tokens: token id " + std::to_string(t) + " is out of range (vocabulary size " +
             std::to_string(c.vocab_size) + ")");
    Session session(*model, a->engine);
    std::vector<float> all(tokens.size() * size_t(c.vocab_size));
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < tokens.size(); ++i) {
      const auto& logits = session.eval_token(tokens[i]);
      std::copy(logits.begin(), logits.end(), all.begin() + i * size_t(c.vocab_size));
    }
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    write_npy_f32(a->out, {tokens.size(), size_t(c.vocab_size)}, all.data());
    std::fprintf(stderr, "[logits] %zu tokens in %.3f s (%.1f tok/s), K=%d; wrote %s\n",
                 tokens.size(), sec, tokens.size() / sec, session.active_experts(), a->out.c_str());
    return 0;
  };
}

const CommandRegistration registration(30, add_logits);

}  // namespace

}  // namespace moeflux::tool
