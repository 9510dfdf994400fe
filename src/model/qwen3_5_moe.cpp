// qwen3_5_moe: transformers' Qwen3_5MoeDecoderLayer (text model). Every layer's MLP half is a
// MoE block with a shared expert (mlp_sublayer).
#include "backend/cpu/ops.hpp"
#include "model/family.hpp"

namespace moeflux {

void qwen3_5_moe_mixer(const ForwardContext& ctx, const LayerWeights& w, int layer,
                       LayerState& state, float* h, int pos) {
  ScopedTimer timer(ctx.timer(layer, &LayerTimes::attention));
  const ModelConfig& c = ctx.config;
  const size_t H = c.hidden_size;
  std::vector<float> x(H), y(H);
  cpu::rmsnorm(h, w.input_norm, x.data(), H, static_cast<float>(c.rms_norm_eps), true);
  if (w.kind == LayerKind::LinearAttention) {
    deltanet_block(ctx, w.lin, state.delta, x.data(), y.data());
  } else {
    attention_block(ctx, w.attn, state.kv, x.data(), y.data(), pos, /*gated=*/true);
  }
  cpu::axpy(1.0f, y.data(), h, H);
}

}  // namespace moeflux
