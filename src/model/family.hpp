// The token-mixer half of one decoder layer of each family, mirroring its transformers module:
//   h <- h + mixer(norm_in(h))
// The MLP half (h <- h + mlp(norm_post(h))) is shared: mlp_sublayer in blocks.hpp.
#pragma once

#include "model/blocks.hpp"

namespace moeflux {

// Per-layer state of a session: a KV cache (full attention) or a DeltaNet state (linear).
struct LayerState {
  KvCache kv;
  DeltaNetState delta;
};

// Qwen3MoeDecoderLayer: RMSNorm (x * w), attention with q/k RMSNorm and RoPE.
void qwen3_moe_mixer(const ForwardContext& ctx, const LayerWeights& w, int layer, LayerState& state,
                     float* h, int pos);

// Qwen3_5MoeDecoderLayer: zero-centred RMSNorm (x * (1 + w)), then Gated DeltaNet or gated full
// attention.
void qwen3_5_moe_mixer(const ForwardContext& ctx, const LayerWeights& w, int layer,
                       LayerState& state, float* h, int pos);

}  // namespace moeflux
