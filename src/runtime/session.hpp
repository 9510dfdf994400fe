// Model (immutable, shareable) and Session (one sequence's state and evaluation).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/thread_pool.hpp"
#include "experts/expert_source.hpp"
#include "formats/package.hpp"
#include "model/family.hpp"
#include "model/rope.hpp"
#include "model/weights.hpp"

namespace moeflux {

struct EngineOptions {
  size_t threads = 0;      // compute threads (0 = all hardware threads)
  size_t io_threads = 8;   // expert reads in flight
  int active_experts = 0;  // experts run per token (--k); 0 = the model's top_k
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

  // Forgets the sequence (position 0, empty caches).
  void clear();

  int position() const { return pos_; }
  int active_experts() const { return active_experts_; }
  const ExpertSource& expert_source() const { return *experts_; }
  // Routing of the last evaluated token, per layer (empty for dense layers).
  const std::vector<RoutingRecord>& last_routing() const { return routing_; }

 private:
  const Model& model_;
  ThreadPool pool_;
  std::unique_ptr<ExpertSource> experts_;
  int active_experts_;
  std::vector<AlignedBuffer> expert_bufs_;
  std::vector<LayerState> states_;
  std::vector<RoutingRecord> routing_;
  std::vector<float> hidden_, normed_, logits_;
  int pos_ = 0;
};

}  // namespace moeflux
