// Model (immutable, shareable) and Session (one sequence's state and evaluation).
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/thread_pool.hpp"
#include "experts/expert_streamer.hpp"
#include "formats/package.hpp"
#include "model/family.hpp"
#include "model/rope.hpp"
#include "model/weights.hpp"

namespace moeflux {

struct EngineOptions {
  size_t threads = 0;           // compute threads (0 = all hardware threads)
  int active_experts = 0;       // experts run per token (--k); 0 = the model's top_k
  size_t prefill_chunk = 256;   // prompt tokens evaluated together (experts loaded once per chunk)
  bool timing = false;          // collect per-layer timings (--timing)
  StreamOptions stream;         // RAM cache, I/O, prefetch (max_active is set from --k)
  // Called after each MoE layer of each evaluated chunk with the routing of its tokens
  // (positions first_pos, first_pos + 1, ...): routing traces.
  std::function<void(int layer, int first_pos, const std::vector<RoutingRecord>&)> on_routing;
};

class Model {
 public:
  // Opens and validates a package, binds its resident weights. Throws moeflux::Error.
  static std::unique_ptr<Model> open(const std::string& dir);

  const Package& package() const { return pkg_; }
  const ModelConfig& config() const { return pkg_.config(); }
  const ModelWeights& weights() const { return weights_; }
  const Rope& rope() const { return rope_; }

 private:
  Model(Package pkg);
  Package pkg_;
  ModelWeights weights_;
  Rope rope_;
};

class Session {
 public:
  Session(const Model& model, const EngineOptions& opts);

  // Evaluates `token` at the next position and returns the logits [vocab]. Throws
  // moeflux::Error for an out-of-range token, a full context or an expert read failure;
  // after an error the session must be clear()ed before further use.
  const std::vector<float>& eval_token(int token);

  // Evaluates `tokens` at the next positions in chunks of prefill_chunk: per chunk and MoE
  // layer every expert the chunk selected is fetched once and run over its tokens together.
  // Returns the last token's logits; with all_logits, also every position's ([n, vocab]).
  const std::vector<float>& eval_prompt(std::span<const int> tokens,
                                        std::vector<float>* all_logits = nullptr);

  // Forgets the sequence (position 0, empty caches). The expert cache is kept.
  void clear();

  int position() const { return pos_; }
  int active_experts() const { return active_experts_; }
  const Model& model() const { return model_; }
  ExpertStreamer& streamer() { return *streamer_; }
  const ExpertStreamer& streamer() const { return *streamer_; }
  // Routing of the last evaluated token, per layer (empty for dense layers).
  const std::vector<RoutingRecord>& last_routing() const { return routing_; }
  // Per-layer timings since construction (empty unless EngineOptions::timing).
  const ForwardTimings& timings() const { return timings_; }

 private:
  void eval_chunk(std::span<const int> tokens, std::vector<float>* all_logits);
  void check_tokens(std::span<const int> tokens) const;

  const Model& model_;
  EngineOptions opts_;
  ThreadPool pool_;
  int active_experts_;
  std::unique_ptr<ExpertStreamer> streamer_;
  std::vector<LayerState> states_;
  std::vector<RoutingRecord> routing_;
  ForwardTimings timings_;
  std::vector<float> hidden_, logits_;
  int pos_ = 0;
};

}  // namespace moeflux
