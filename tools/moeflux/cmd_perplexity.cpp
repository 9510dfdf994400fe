// moeflux perplexity: how well the model predicts a text file.
//
// The file is tokenized (special tokens such as <|endoftext|> recognised) and cut into
// non-overlapping windows of --ctx tokens, the last one possibly shorter: it is scored too
// (llama.cpp's perplexity drops it), unless it is a single token, which has nothing before it in
// its window to be predicted from (then the summary says that one token was left out). Each
// window is evaluated from an empty context (session cleared) and every position i < len-1
// predicts token i+1:
//   nll_t = -log softmax(logits_i)[w_{i+1}] = logsumexp(logits_i) - logits_i[w_{i+1}]  (double)
//   ppl   = exp(sum nll_t / N),  N = sum over windows of (len - 1)
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/finite.hpp"
#include "core/output_file.hpp"
#include "engine_options.hpp"
#include "model_dir.hpp"
#include "text_model.hpp"

namespace moeflux::tool {

namespace {

// -log softmax(logits)[target], in double: logsumexp(l) - l[target].
double token_nll(const float* logits, size_t vocab, int target) {
  double mx = -INFINITY;
  for (size_t v = 0; v < vocab; ++v) mx = std::max(mx, double(logits[v]));
  double sum = 0;
  for (size_t v = 0; v < vocab; ++v) sum += std::exp(double(logits[v]) - mx);
  return mx + std::log(sum) - double(logits[size_t(target)]);
}

Runner add_perplexity(CLI::App& app) {
  auto* cmd = app.add_subcommand("perplexity", "Perplexity of the model on a text file");
  struct Args {
    std::string model, file, json;
    int ctx = 0;  // 0: 256, or the model's context if smaller
    EngineArgs engine;
  };
  auto a = std::make_shared<Args>();
  add_model_option(cmd, &a->model);
  cmd->add_option("-f,--file", a->file, "Text file")->required();
  cmd->add_option("--ctx", a->ctx,
                  "Tokens per window (default 256, or the model's context if smaller)")
      ->check(integer_range(2, 1 << 30));
  cmd->add_option("--json", a->json,
                  "Also write {ppl, nll, n_tokens, n_windows, ctx, left_out} to this file");
  add_engine_options(cmd, &a->engine, /*context_option=*/false);
  return [a] {
    const std::string text = read_text_file(a->file, "-f");
    EngineOptions engine = a->engine.to_options();
    if (!a->json.empty()) check_output_path(a->json, "--json");
    const TextModel tm = TextModel::open(a->model, !a->engine.no_verify);
    check_engine_options(engine, tm.model->package());
    const ModelConfig& c = tm.model->config();
    const int want = a->ctx > 0 ? a->ctx : std::min(256, c.max_position_embeddings);
    if (want > c.max_position_embeddings)
      usage_fail("--ctx " + std::to_string(a->ctx) + " exceeds the model's context of " +
                 std::to_string(c.max_position_embeddings) + " positions");
    const std::vector<int> ids = tm.tokenizer->encode(text);
    if (ids.size() < 2)
      fail("-f: " + a->file + " has " + std::to_string(ids.size()) +
           " token(s); perplexity needs at least 2");

    const size_t V = size_t(c.vocab_size), n = ids.size();
    const size_t ctx = std::min(size_t(want), n);
    const size_t left_out = n % ctx == 1 ? 1 : 0;  // a trailing window of one token
    const size_t n_windows = (n - left_out + ctx - 1) / ctx;
    engine.context = ctx;  // a window is the most a session holds
    Session session(*tm.model, engine);
    std::vector<float> logits;
    double nll = 0;
    size_t scored = 0, w = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t b = 0; w < n_windows; b += ctx) {
      const std::span<const int> window(ids.data() + b, std::min(ctx, n - b));
      session.clear();
      session.eval_prompt(window, &logits);
      require_finite_logits(logits, V, b, tm.dir);
      for (size_t i = 0; i + 1 < window.size(); ++i)
        nll += token_nll(&logits[i * V], V, window[i + 1]);
      scored += window.size() - 1;
      ++w;
      const double sec =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr,
                   "[perplexity] window %zu/%zu: running ppl %.4f (%zu tokens, %.1f tok/s)\n", w,
                   n_windows, std::exp(nll / double(scored)), scored,
                   double(b + window.size()) / std::max(sec, 1e-9));
    }
    const double mean = nll / double(scored), ppl = std::exp(mean);
    std::printf("ppl = %.6f (%zu tokens, %zu windows%s)\n", ppl, scored, w,
                left_out ? "; the last token left out: a window of one predicts nothing" : "");
    std::fflush(stdout);
    if (!a->json.empty()) {
      const nlohmann::json j = {{"ppl", ppl},      {"nll", mean},    {"n_tokens", scored},
                                {"n_windows", w},  {"ctx", ctx},     {"left_out", left_out},
                                {"file", a->file}, {"model", tm.dir}};
      write_output_file(a->json,
                        {j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"},
                        "--json");
    }
    return 0;
  };
}

const CommandRegistration registration(50, add_perplexity);

}  // namespace

}  // namespace moeflux::tool
