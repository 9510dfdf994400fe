// Building blocks shared by the families' decoder layers.
#pragma once

#include "model/forward_context.hpp"
#include "model/weights.hpp"

namespace moeflux {

// Multi-head attention with GQA, per-head q/k RMSNorm and RoPE, over the cache plus this
// token at position `pos` (appended to the cache). With `gated`, q_proj yields per head
// [query | gate] and the attention output is multiplied by sigmoid(gate) before o_proj.
//   o_h = softmax_t(q_h · k_t / sqrt(head_dim)) v_t   (t = 0..pos, kv head = h / (heads / kv_heads))
// x: the normalised hidden state [hidden]; writes out[hidden].
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

// Y[t] = down (silu(gate X[t]) * up X[t]) for T tokens (X, Y row-major [T, hidden]).
void mlp_batch(const ForwardContext& ctx, const MlpWeights& w, size_t intermediate, const float* X,
               size_t T, float* Y);

// Routed experts (+ shared expert) for T tokens: p = softmax(router x); top-K of p; weights
// renormalised to sum 1 when norm_topk_prob; y = sum_e w_e expert_e(x)
// [+ sigmoid(shared_gate x) shared(x)]. Each expert any of the T tokens selected is fetched once
// (in batches of K) and run over all its tokens as a small matrix product.
// routing (optional) receives each token's choice.
void moe_batch(const ForwardContext& ctx, const MoeWeights& w, int layer, const float* X, size_t T,
               float* Y, std::vector<RoutingRecord>* routing);

// The top-K experts the router of `w` picks for the normalised hidden state x (no weights):
// the look-ahead prediction.
std::vector<int> route_only(const ForwardContext& ctx, const MoeWeights& w, const float* x);

// The MLP half of a decoder layer for T tokens: H[t] += mlp(norm_post(H[t])).
void mlp_sublayer(const ForwardContext& ctx, const LayerWeights& w, int layer, float* H, size_t T,
                  std::vector<RoutingRecord>* routing);

// A fresh state for a model's layer.
DeltaNetState make_deltanet_state(const ModelConfig& c);

}  // namespace moeflux
