// Building blocks shared by the families' decoder layers. Each takes the normalised hidden
// state x[hidden] and writes its contribution out[hidden] (the caller adds the residual).
#pragma once

#include "model/forward_context.hpp"
#include "model/weights.hpp"

namespace moeflux {

// Multi-head attention with GQA, per-head q/k RMSNorm and RoPE, over the cache plus this
// token at position `pos` (appended to the cache). With `gated`, q_proj yields per head
// [query | gate] and the attention output is multiplied by sigmoid(gate) before o_proj.
//   o_h = softmax_t(q_h · k_t / sqrt(head_dim)) v_t   (t = 0..pos, kv head = h / (heads / kv_heads))
void attention_block(const ForwardContext& ctx, const AttentionWeights& w, KvCache& cache,
                     const float* x, float* out, int pos, bool gated);

// Gated DeltaNet step for one token (qwen3_5_moe linear attention). Per value head h with key
// head kh = h / (v_heads / k_heads), after a causal depthwise conv + SiLU over q|k|v channels and
// L2-normalised q, k (q scaled by 1/sqrt(d_k)):
//   S_h <- exp(g_h) S_h;  S_h <- S_h + k (beta_h (v_h - S_h^T k))^T;  o_h = S_h^T q
// with beta = sigmoid(b x), g = -exp(A_log) softplus(a x + dt_bias); then
// o_h <- rmsnorm(o_h) * w_norm * silu(z_h), out = W_out o.
void deltanet_block(const ForwardContext& ctx, const DeltaNetWeights& w, DeltaNetState& state,
                    const float* x, float* out);

// out = down (silu(gate x) * up x)
void mlp_block(const ForwardContext& ctx, const MlpWeights& w, size_t intermediate,
               const float* x, float* out);

// Routed experts (+ shared expert): p = softmax(router x); top-K of p; weights renormalised to
// sum 1 when norm_topk_prob; out = sum_e w_e expert_e(x) [+ sigmoid(shared_gate x) shared(x)].
// Expert records of MoE layer `layer` come from ctx.experts.
void moe_block(const ForwardContext& ctx, const MoeWeights& w, int layer, const float* x,
               float* out, RoutingRecord* routing);

// A fresh state for a model's layer.
DeltaNetState make_deltanet_state(const ModelConfig& c);

}  // namespace moeflux
