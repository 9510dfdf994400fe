// One decoder layer of each family, mirroring its transformers module:
//   h <- h + mixer(norm_in(h));  h <- h + mlp(norm_post(h))
#pragma once

#include "model/blocks.hpp"

namespace moeflux {

// Per-layer state of a session: a KV cache (full attention) or a DeltaNet state (linear).
struct LayerState {
  KvCache kv;
  DeltaNetState delta;
};

// Qwen3MoeDecoderLayer: attention (q/k RMSNorm, RoPE) + sparse MoE block or dense MLP.
void qwen3_moe_layer(const ForwardContext& ctx, const LayerWeights& w, int layer,
                     LayerState& state, float* h, int pos, RoutingRecord* routing);

// Qwen3_5MoeDecoderLayer: Gated DeltaNet or gated full attention + MoE with shared expert;
// zero-centred RMSNorms (x * (1 + w)).
void qwen3_5_moe_layer(const ForwardContext& ctx, const LayerWeights& w, int layer,
                       LayerState& state, float* h, int pos, RoutingRecord* routing);

}  // namespace moeflux
