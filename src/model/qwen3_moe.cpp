// qwen3_moe: transformers' Qwen3MoeDecoderLayer. The mixer is RMSNorm (x·w) then attention with
// per-head q/k RMSNorm and RoPE; the MLP half (mlp_sublayer) is a sparse MoE block with a
// softmax top-k router, or a dense MLP on `mlp_only_layers` / off the `decoder_sparse_step`.
#include "model/family.hpp"
#include "model/layers.hpp"

namespace moeflux {

namespace {

RouterSpec router(const ModelConfig& c, int active) {
  return {RouterKind::SoftmaxTopK, active, c.norm_topk_prob};
}

constexpr LayerKind kKinds[] = {LayerKind::FullAttention};

}  // namespace

const FamilyDef kQwen3MoeFamily{Family::Qwen3Moe, gqa_mixer, router, /*zero_centered_norms=*/false,
                                kKinds};

}  // namespace moeflux
