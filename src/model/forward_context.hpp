// What a layer's forward pass needs besides its weights: config, thread pool, expert source,
// rope table, and the per-session state it reads and updates.
#pragma once

#include <vector>

#include "core/aligned_buffer.hpp"
#include "core/thread_pool.hpp"
#include "experts/expert_source.hpp"
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

struct ForwardContext {
  const ModelConfig& config;
  const ExpertLayout& expert_layout;
  const Rope& rope;
  ThreadPool& pool;
  ExpertSource& experts;
  int active_experts;                       // K actually run per token (--k), <= num_experts
  std::vector<AlignedBuffer>& expert_bufs;  // active_experts records of expert_layout.record_bytes
};

}  // namespace moeflux
