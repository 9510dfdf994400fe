// qwen3_moe: transformers' Qwen3MoeDecoderLayer (the MLP half is mlp_sublayer: a sparse MoE
// block, or a dense MLP on `mlp_only_layers` / off the `decoder_sparse_step`).
#include "backend/cpu/ops.hpp"
#include "model/family.hpp"

namespace moeflux {

void qwen3_moe_mixer(const ForwardContext& ctx, const LayerWeights& w, int layer, LayerState& state,
                     float* h, int pos) {
  ScopedTimer timer(ctx.timer(layer, &LayerTimes::attention));
  const ModelConfig& c = ctx.config;
  const size_t H = c.hidden_size;
  std::vector<float> x(H), y(H);
  cpu::rmsnorm(h, w.input_norm, x.data(), H, static_cast<float>(c.rms_norm_eps), false);
  attention_block(ctx, w.attn, state.kv, x.data(), y.data(), pos, /*gated=*/false);
  cpu::axpy(1.0f, y.data(), h, H);
}

}  // namespace moeflux
