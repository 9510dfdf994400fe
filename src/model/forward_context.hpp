// What a layer's forward pass needs besides its weights: config, thread pool, the expert
// streamer, rope table, per-layer timers, and the per-session state it reads and updates.
#pragma once

#include <chrono>
#include <vector>

#include "core/thread_pool.hpp"
#include "experts/expert_streamer.hpp"
#include "formats/package.hpp"
#include "model/config.hpp"
#include "model/rope.hpp"

namespace moeflux {

// Keys and values of one full-attention layer for positions [0, length).
struct KvCache {
  std::vector<float> k, v;  // [length, num_kv_heads * head_dim]
};

// Recurrent state of one Gated DeltaNet layer.
struct DeltaNetState {
  std::vector<float> conv;  // [conv_dim, kernel - 1]: the last kernel-1 inputs, oldest first
  std::vector<float> S;     // [v_heads, key_head_dim, value_head_dim]
};

// Routing decisions of one MoE layer for one token (exposed for tracing and tests).
struct RoutingRecord {
  std::vector<int> experts;
  std::vector<float> weights;
};

// Wall time per layer, split as in flash-moe's --timing, summed over the tokens evaluated.
struct LayerTimes {
  double attention = 0;  // token mixer: attention or Gated DeltaNet (incl. its input norm)
  double router = 0;     // router matvec, softmax, top-k (incl. post-attention norm)
  double io_wait = 0;    // blocked on expert reads
  double experts = 0;    // routed + shared expert FFNs (excluding io_wait)
  double prefetch = 0;   // issuing predictions (lookahead router)
  double wall = 0;       // the whole layer; wall - the above = other (residual adds, copies, ...)
};

struct ForwardTimings {
  std::vector<LayerTimes> layers;
  double embed = 0, head = 0;  // embedding lookup, final norm + LM head
  uint64_t tokens = 0;
};

// Adds the time since construction to `slot` when timing is on (slot != nullptr).
class ScopedTimer {
 public:
  explicit ScopedTimer(double* slot) : slot_(slot) {
    if (slot_) t0_ = std::chrono::steady_clock::now();
  }
  ~ScopedTimer() {
    if (slot_)
      *slot_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  double* slot_;
  std::chrono::steady_clock::time_point t0_;
};

struct ForwardContext {
  const ModelConfig& config;
  const ExpertLayout& expert_layout;
  const Rope& rope;
  ThreadPool& pool;
  ExpertStreamer& streamer;
  int active_experts;       // K actually run per token (--k), <= num_experts
  ForwardTimings* timings;  // null unless --timing

  double* timer(int layer, double LayerTimes::*field) const {
    return timings ? &(timings->layers[layer].*field) : nullptr;
  }
};

}  // namespace moeflux
