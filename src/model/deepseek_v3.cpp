// deepseek_v3 (and kimi_k2): transformers' DeepseekV3DecoderLayer. The mixer is RMSNorm (x·w)
// then multi-head latent attention (latent_attention.cpp); the MLP half (mlp_sublayer) is a
// dense MLP on the first first_k_dense_replace layers, else routed experts chosen by the
// sigmoid group-limited `noaux_tc` router plus the ungated shared experts.
#include "model/family.hpp"
#include "model/layers.hpp"

namespace moeflux {

namespace {

void mixer(const ForwardContext& ctx, const LayerWeights& w, int layer) {
  ScopedTimer timer(ctx.timer(layer, &LayerTimes::attention));
  input_norm(ctx, w.input_norm, layer);
  latent_attention_block(ctx, w.mla, layer);
}

constexpr LayerKind kKinds[] = {LayerKind::LatentAttention};

}  // namespace

// The router of deepseek_v3 and glm4_moe (RouterKind::SigmoidGroupTopK); the layer's
// correction bias is added by the MoE block (MoeWeights::router_bias).
RouterSpec grouped_router(const ModelConfig& c, int active) {
  RouterSpec r;
  r.kind = RouterKind::SigmoidGroupTopK;
  r.top_k = active;
  r.norm_topk_prob = c.norm_topk_prob;
  r.n_group = c.n_group;
  r.topk_group = c.topk_group;
  r.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
  return r;
}

const FamilyDef kDeepseekV3Family{Family::DeepseekV3, mixer, grouped_router,
                                  /*zero_centered_norms=*/false, kKinds};

}  // namespace moeflux
