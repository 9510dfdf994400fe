// qwen3_5_moe: transformers' Qwen3_5MoeDecoderLayer (text model).
#include "backend/cpu/ops.hpp"
#include "model/family.hpp"

namespace moeflux {

void qwen3_5_moe_layer(const ForwardContext& ctx, const LayerWeights& w, int layer,
                       LayerState& state, float* h, int pos, RoutingRecord* routing) {
  const ModelConfig& c = ctx.config;
  const size_t H = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  std::vector<float> x(H), y(H);

  cpu::rmsnorm(h, w.input_norm, x.data(), H, eps, /*zero_centered=*/true);
  if (w.kind == LayerKind::LinearAttention) {
    deltanet_block(ctx, w.lin, state.delta, x.data(), y.data());
  } else {
    attention_block(ctx, w.attn, state.kv, x.data(), y.data(), pos, /*gated=*/true);
  }
  cpu::axpy(1.0f, y.data(), h, H);

  cpu::rmsnorm(h, w.post_norm, x.data(), H, eps, /*zero_centered=*/true);
  moe_block(ctx, w.moe, layer, x.data(), y.data(), routing);  // every layer is MoE
  cpu::axpy(1.0f, y.data(), h, H);
}

}  // namespace moeflux
