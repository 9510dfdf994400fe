#include "model/tensor_specs.hpp"

#include <cstdio>

namespace moeflux {

std::string layer_tensor(int layer, const std::string& rest) {
  return "layers." + std::to_string(layer) + "." + rest;
}

std::vector<TensorSpec> resident_tensor_specs(const ModelConfig& c) {
  std::vector<TensorSpec> s;
  const int64_t H = c.hidden_size;
  auto add = [&](std::string n, std::vector<int64_t> shape, TensorRole role, bool routes = false) {
    TensorSpec t;
    t.name = std::move(n);
    t.shape = std::move(shape);
    t.role = role;
    t.routing = routes;
    s.push_back(std::move(t));
  };
  auto mat = [&](std::string n, int64_t rows, int64_t cols) {
    add(std::move(n), {rows, cols}, TensorRole::Matrix);
  };
  auto routing = [&](std::string n, int64_t rows, int64_t cols) {
    add(std::move(n), {rows, cols}, TensorRole::Matrix, /*routes=*/true);
  };
  auto vec = [&](std::string n, int64_t len) { add(std::move(n), {len}, TensorRole::Vector); };
  auto derived = [&](std::string n, int64_t rows, int64_t cols, Derive d, std::string source,
                     int64_t block = 0) {
    add(std::move(n), {rows, cols}, TensorRole::Matrix);
    s.back().derive = d;
    s.back().source = std::move(source);
    s.back().block = block;
  };

  mat("embed_tokens.weight", c.vocab_size, H);
  vec("norm.weight", H);
  if (!c.tie_word_embeddings) mat("lm_head.weight", c.vocab_size, H);

  for (int i = 0; i < c.num_layers; ++i) {
    auto L = [&](const std::string& rest) { return layer_tensor(i, rest); };
    vec(L("input_layernorm.weight"), H);
    vec(L("post_attention_layernorm.weight"), H);
    if (c.layer_kind[i] == LayerKind::LatentAttention) {
      const int64_t nh = c.num_heads, lora = c.kv_lora_rank, R = c.qk_rope_head_dim;
      const int64_t qk = c.head_dim, nope = c.qk_nope_head_dim, v = c.v_head_dim;
      // Rope rows: de-interleaved when the checkpoint interleaves them (Derive::DeinterleaveRope).
      auto rope_rows = [&](const std::string& n, int64_t rows, int64_t cols, int64_t block) {
        if (c.rope_interleave)
          derived(n, rows, cols, Derive::DeinterleaveRope, n, block);
        else
          mat(n, rows, cols);
      };
      if (c.q_lora_rank > 0) {
        mat(L("self_attn.q_a_proj.weight"), c.q_lora_rank, H);
        vec(L("self_attn.q_a_layernorm.weight"), c.q_lora_rank);
        rope_rows(L("self_attn.q_b_proj.weight"), nh * qk, c.q_lora_rank, qk);
      } else {
        rope_rows(L("self_attn.q_proj.weight"), nh * qk, H, qk);
      }
      rope_rows(L("self_attn.kv_a_proj_with_mqa.weight"), lora + R, H, lora + R);
      vec(L("self_attn.kv_a_layernorm.weight"), lora);
      const std::string kvb = L("self_attn.kv_b_proj.weight");
      derived(L("self_attn.kv_b_proj.k_absorb"), nh * lora, nope, Derive::KvbKeysAbsorbed, kvb);
      derived(L("self_attn.kv_b_proj.v_up"), nh * v, lora, Derive::KvbValues, kvb);
      mat(L("self_attn.o_proj.weight"), H, nh * v);
    } else if (c.layer_kind[i] == LayerKind::FullAttention) {
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
      }
      if (c.o_proj_bias()) vec(L("self_attn.o_proj.bias"), H);
      if (c.qk_norm) {
        vec(L("self_attn.q_norm.weight"), c.head_dim);
        vec(L("self_attn.k_norm.weight"), c.head_dim);
      }
    } else {
      const int64_t conv = c.linear_conv_dim(), vdim = c.linear_value_dim();
      const int64_t nv = c.linear_num_value_heads;
      mat(L("linear_attn.in_proj_qkv.weight"), conv, H);
      mat(L("linear_attn.in_proj_z.weight"), vdim, H);
      mat(L("linear_attn.in_proj_b.weight"), nv, H);
      mat(L("linear_attn.in_proj_a.weight"), nv, H);
      add(L("linear_attn.conv1d.weight"), {conv, c.linear_conv_kernel}, TensorRole::Conv);
      vec(L("linear_attn.dt_bias"), nv);
      vec(L("linear_attn.A_log"), nv);
      vec(L("linear_attn.norm.weight"), c.linear_value_head_dim);
      mat(L("linear_attn.out_proj.weight"), H, vdim);
    }
    if (c.layer_is_moe[i]) {
      routing(L("mlp.gate.weight"), c.num_experts, H);
      if (c.grouped_router()) vec(L("mlp.gate.e_score_correction_bias"), c.num_experts);
      if (c.shared_expert_intermediate_size > 0) {
        // qwen3_5: one gated `shared_expert`; deepseek_v3 / glm4_moe: `shared_experts` (their
        // n_shared_experts fused into one MLP), ungated.
        const int64_t S = c.shared_expert_intermediate_size;
        const std::string p = c.shared_expert_gate ? "mlp.shared_expert." : "mlp.shared_experts.";
        mat(L(p + "gate_proj.weight"), S, H);
        mat(L(p + "up_proj.weight"), S, H);
        mat(L(p + "down_proj.weight"), H, S);
        if (c.shared_expert_gate) routing(L("mlp.shared_expert_gate.weight"), 1, H);
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

ParameterCounts count_parameters(const ModelConfig& c) {
  ParameterCounts p;
  for (const TensorSpec& t : resident_tensor_specs(c)) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    p.total += n;
    if (t.name == "embed_tokens.weight") p.embedding = n;
    if (t.name == "lm_head.weight") p.lm_head = n;
  }
  p.active = p.total;
  const uint64_t expert = 3 * uint64_t(c.hidden_size) * uint64_t(c.moe_intermediate_size);
  const uint64_t moe = static_cast<uint64_t>(c.num_moe_layers());
  p.total += moe * uint64_t(c.num_experts) * expert;
  p.active += moe * uint64_t(c.top_k) * expert;
  return p;
}

std::string describe_parameters(const ModelConfig& c) {
  const ParameterCounts p = count_parameters(c);
  auto b = [](uint64_t n) {
    char s[32];
    if (n >= 10'000'000)
      std::snprintf(s, sizeof s, "%.1f B", double(n) / 1e9);
    else
      std::snprintf(s, sizeof s, "%.3f M", double(n) / 1e6);
    return std::string(s);
  };
  const std::string out = b(p.total) + " total, " + b(p.active) + " active per token";
  if (!p.lm_head) return out;  // tied: the embedding is read whole as the LM head
  return out + " (" + b(p.active - p.embedding) + " without the embedding table, " +
         b(p.active - p.embedding - p.lm_head) + " without it and the LM head)";
}

}  // namespace moeflux
