// qwen3_5_moe: transformers' Qwen3_5MoeDecoderLayer (text model). Zero-centred RMSNorms
// (x·(1 + w)); the mixer is Gated DeltaNet on linear-attention layers and gated full attention
// (output · sigmoid(gate), partial rotary) on the others; every MLP half is a MoE block with a
// softmax top-k router and a shared expert scaled by sigmoid(shared_expert_gate x).
#include "model/family.hpp"
#include "model/layers.hpp"

namespace moeflux {

namespace {

void mixer(const ForwardContext& ctx, const LayerWeights& w, int layer) {
  ScopedTimer timer(ctx.timer(layer, &LayerTimes::attention));
  input_norm(ctx, w.input_norm, layer);
  if (w.kind == LayerKind::LinearAttention)
    deltanet_block(ctx, w.lin, layer);
  else
    attention_block(ctx, w.attn, layer, /*gated=*/true, /*zero_centered=*/true);
}

RouterSpec router(const ModelConfig& c, int active) {
  return {RouterKind::SoftmaxTopK, active, c.norm_topk_prob};
}

constexpr LayerKind kKinds[] = {LayerKind::FullAttention, LayerKind::LinearAttention};

}  // namespace

const FamilyDef kQwen3_5MoeFamily{Family::Qwen3_5Moe, mixer, router,
                                  /*zero_centered_norms=*/true, kKinds};

}  // namespace moeflux
