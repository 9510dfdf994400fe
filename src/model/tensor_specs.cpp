#include "model/tensor_specs.hpp"

namespace moeflux {

std::string layer_tensor(int layer, const std::string& rest) {
  return "layers." + std::to_string(layer) + "." + rest;
}

std::vector<TensorSpec> resident_tensor_specs(const ModelConfig& c) {
  std::vector<TensorSpec> s;
  const int64_t H = c.hidden_size;
  auto mat = [&](std::string n, int64_t rows, int64_t cols) {
    s.push_back({std::move(n), {rows, cols}, TensorRole::Matrix});
  };
  auto routing = [&](std::string n, int64_t rows, int64_t cols) {
    s.push_back({std::move(n), {rows, cols}, TensorRole::Matrix, /*routing=*/true});
  };
  auto vec = [&](std::string n, int64_t len) {
    s.push_back({std::move(n), {len}, TensorRole::Vector});
  };

  mat("embed_tokens.weight", c.vocab_size, H);
  vec("norm.weight", H);
  if (!c.tie_word_embeddings) mat("lm_head.weight", c.vocab_size, H);

  for (int i = 0; i < c.num_layers; ++i) {
    auto L = [&](const std::string& rest) { return layer_tensor(i, rest); };
    vec(L("input_layernorm.weight"), H);
    vec(L("post_attention_layernorm.weight"), H);
    if (c.layer_kind[i] == LayerKind::FullAttention) {
      const int64_t q_rows = int64_t{c.num_heads} * c.head_dim * (c.gated_attention() ? 2 : 1);
      const int64_t kv_rows = int64_t{c.num_kv_heads} * c.head_dim;
      const int64_t o_cols = int64_t{c.num_heads} * c.head_dim;
      mat(L("self_attn.q_proj.weight"), q_rows, H);
      mat(L("self_attn.k_proj.weight"), kv_rows, H);
      mat(L("self_attn.v_proj.weight"), kv_rows, H);
      mat(L("self_attn.o_proj.weight"), H, o_cols);
      if (c.attention_bias) {
        vec(L("self_attn.q_proj.bias"), q_rows);
        vec(L("self_attn.k_proj.bias"), kv_rows);
        vec(L("self_attn.v_proj.bias"), kv_rows);
        vec(L("self_attn.o_proj.bias"), H);
      }
      vec(L("self_attn.q_norm.weight"), c.head_dim);
      vec(L("self_attn.k_norm.weight"), c.head_dim);
    } else {
      const int64_t conv = c.linear_conv_dim(), vdim = c.linear_value_dim();
      const int64_t nv = c.linear_num_value_heads;
      mat(L("linear_attn.in_proj_qkv.weight"), conv, H);
      mat(L("linear_attn.in_proj_z.weight"), vdim, H);
      mat(L("linear_attn.in_proj_b.weight"), nv, H);
      mat(L("linear_attn.in_proj_a.weight"), nv, H);
      s.push_back({L("linear_attn.conv1d.weight"), {conv, c.linear_conv_kernel}, TensorRole::Conv});
      vec(L("linear_attn.dt_bias"), nv);
      vec(L("linear_attn.A_log"), nv);
      vec(L("linear_attn.norm.weight"), c.linear_value_head_dim);
      mat(L("linear_attn.out_proj.weight"), H, vdim);
    }
    if (c.layer_is_moe[i]) {
      routing(L("mlp.gate.weight"), c.num_experts, H);
      if (c.shared_expert_intermediate_size > 0) {
        const int64_t S = c.shared_expert_intermediate_size;
        mat(L("mlp.shared_expert.gate_proj.weight"), S, H);
        mat(L("mlp.shared_expert.up_proj.weight"), S, H);
        mat(L("mlp.shared_expert.down_proj.weight"), H, S);
        routing(L("mlp.shared_expert_gate.weight"), 1, H);
      }
    } else {
      const int64_t I = c.intermediate_size;
      mat(L("mlp.gate_proj.weight"), I, H);
      mat(L("mlp.up_proj.weight"), I, H);
      mat(L("mlp.down_proj.weight"), H, I);
    }
  }
  return s;
}

QuantFormat resident_matrix_format(const TensorSpec& spec, QuantFormat source,
                                   std::optional<QuantFormat> wanted) {
  if (!wanted || spec.routing || spec.role != TensorRole::Matrix) return source;
  if (!format_accepts_cols(*wanted, static_cast<size_t>(spec.shape[1]))) return source;
  return *wanted;
}

}  // namespace moeflux
