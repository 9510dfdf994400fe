// One forward pass of a batch through the model (backend ops only): embedding, every decoder
// layer (the family's mixer, then the MLP half), prefetch of the next steps' experts, and the
// logits of the rows asked for.
#pragma once

#include <span>
#include <vector>

#include "core/top_k.hpp"
#include "model/forward_context.hpp"
#include "model/weights.hpp"

namespace moeflux {

// tokens: the batch's T rows (ctx.rows == T; ctx.seqs cover [0, T) in order). Prefetch runs in
// decode (every sequence contributes one row): temporal (each sequence's previous experts of a
// layer, read while the layer's mixer runs) and look-ahead (the next MoE layer's router on the
// post-attention state, queued behind this layer's reads). Logits of rows
// [logits_row, logits_row + logits.size()) go to the host buffers logits[i] ([vocab] each);
// picks (empty, or one per logits row): for each row what its pick asks — the greedy pick
// (Backend::argmax_rows) or the k best (Backend::top_k_rows, what the sampler draws from) — and
// whether its logits are all finite, computed where the logits are (the host's copy is not read).
struct LogitsPick {
  size_t top_k = 0;            // asked: 0 = the greedy pick; k = the k best
  int id = 0;                  // greedy: core/argmax.hpp's pick
  std::vector<TopEntry> best;  // top_k: the k best (core/top_k.hpp), best first
  bool finite = true;          // every logit of the row finite (else the caller reports it)
};
// `p` from a host copy of its row of logits (what the backend computes where they are).
void pick_from_host(std::span<const float> row, LogitsPick& p);
void forward(const ForwardContext& ctx, const ModelWeights& w, std::span<const int> tokens,
             PrefetchMode prefetch, size_t logits_row, std::span<float* const> logits,
             std::span<LogitsPick> picks = {});

}  // namespace moeflux
