// One forward pass of a batch through the model (backend ops only): embedding, every decoder
// layer (the family's mixer, then the MLP half), prefetch of the next steps' experts, and the
// logits of the rows asked for.
#pragma once

#include <span>

#include "model/forward_context.hpp"
#include "model/weights.hpp"

namespace moeflux {

// tokens: the batch's T rows (ctx.rows == T; ctx.seqs cover [0, T) in order). Prefetch runs in
// decode (every sequence contributes one row): temporal (each sequence's previous experts of a
// layer, read while the layer's mixer runs) and look-ahead (the next MoE layer's router on the
// post-attention state, queued behind this layer's reads). Logits of rows
// [logits_row, logits_row + logits.size()) go to the host buffers logits[i] ([vocab] each).
void forward(const ForwardContext& ctx, const ModelWeights& w, std::span<const int> tokens,
             PrefetchMode prefetch, size_t logits_row, std::span<float* const> logits);

}  // namespace moeflux
