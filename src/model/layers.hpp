// The decoder-layer blocks the families share, written on backend ops only (backend.hpp).
// Each works on the batch's rows in the workspace: the mixers and the MLP half read the
// normalised input ws.xn and add their output into the residual stream ws.h.
#pragma once

#include <span>

#include "model/family.hpp"
#include "model/workspace.hpp"

namespace moeflux {

// ws.xn = rmsnorm(ws.h) with the family's norm convention (x·w or x·(1 + w)), for the mixer of
// `layer`. Only layer 0's is issued here: every later layer's was written by the combine that
// ended the layer before (mlp_sublayer's next_input_norm), in the same pass over ws.h.
void input_norm(const ForwardContext& ctx, const float* w, int layer);

// Multi-head attention with GQA, per-head q/k RMSNorm and RoPE over each sequence's KV cache;
// with `gated`, q_proj yields per head [query | gate] and the output is multiplied by
// sigmoid(gate) before o_proj:  h += W_o attn(q, k, v) (+ bias).
void attention_block(const ForwardContext& ctx, const AttentionWeights& w, int layer, bool gated,
                     bool zero_centered);

// The token mixer of qwen3_moe and glm4_moe: RMSNorm (x·w), then ungated attention_block
// (timed as the layer's attention).
void gqa_mixer(const ForwardContext& ctx, const LayerWeights& w, int layer);

// Multi-head latent attention (deepseek_v3) over each sequence's compressed cache (latent +
// rope key per position), in the absorbed form for prompt and decode alike (latent_attention.cpp
// has the math):  h += W_o attn.
void latent_attention_block(const ForwardContext& ctx, const LatentAttentionWeights& w, int layer);

// Gated DeltaNet (qwen3_5_moe linear attention): projections, causal conv1d + SiLU, the gated
// delta rule over each sequence's state, gated RMSNorm, out_proj:  h += W_out o.
void deltanet_block(const ForwardContext& ctx, const DeltaNetWeights& w, int layer);

// The MLP half: h += mlp(rmsnorm(h, post_norm)) — the routed MoE block (router, experts
// streamed per record, shared expert, combine) or a dense MLP — then, when next_input_norm is
// given (every layer but the last), ws.xn = rmsnorm(h, next_input_norm): the next layer's
// input_norm(), with the combine (Backend::combine_norm). Updates each sequence's last_routing for
// its last row and reports routing to ctx.on_routing.
void mlp_sublayer(const ForwardContext& ctx, const LayerWeights& w, int layer, bool zero_centered,
                  const float* next_input_norm);

// Records the routing of MoE layer `layer` (read from the workspace's host area of that layer):
// each sequence's last_routing for its last row, and ctx.on_routing. mlp_sublayer calls it,
// except on the device-routed path, where forward() calls it after the pass.
void record_routing(const ForwardContext& ctx, int layer);

// Look-ahead prefetch: the router of MoE layer `next` applied to the current hidden state of
// the batch's last row (normalised with that layer's post-attention norm); its top-K experts
// are prefetched, queued behind the current layer's own reads when `after_demand`.
void lookahead_prefetch(const ForwardContext& ctx, const LayerWeights& next_w, int next,
                        bool zero_centered, bool after_demand);

// The final norm and LM head of rows [first_row, first_row + n) of ws.h into rows [0, n) of
// ws.logits (n <= Workspace::kLogitRows); nothing is downloaded.
void head_rows(const ForwardContext& ctx, const ModelWeights& w, bool zero_centered,
               size_t first_row, size_t n);
// Rows [0, dst.size()) of ws.logits into dst (waits for the device).
void download_logits(const ForwardContext& ctx, std::span<float* const> dst);
// logits of rows [first_row, first_row + dst.size()): final norm and LM head, in blocks of
// Workspace::kLogitRows rows, each row downloaded to its host destination dst[i] ([vocab]).
void final_logits(const ForwardContext& ctx, const ModelWeights& w, bool zero_centered,
                  size_t first_row, std::span<float* const> dst);

}  // namespace moeflux
