// glm4_moe (GLM-4.5, GLM-4.5-Air, GLM-4.6): transformers' Glm4MoeDecoderLayer. The mixer is
// RMSNorm (x·w) then GQA attention with partial rotary (rotate_half on the first
// head_dim · partial_rotary_factor dims), q/k/v biases with attention_bias (o_proj never has
// one) and per-head q/k RMSNorm only with use_qk_norm; the MLP half is deepseek_v3's: dense first
// layers, the sigmoid group-limited router, ungated shared experts.
#include "model/family.hpp"
#include "model/layers.hpp"

namespace moeflux {

namespace {

constexpr LayerKind kKinds[] = {LayerKind::FullAttention};

}  // namespace

const FamilyDef kGlm4MoeFamily{Family::Glm4Moe, gqa_mixer, grouped_router,
                               /*zero_centered_norms=*/false, kKinds};

}  // namespace moeflux
