#include "model/weights.hpp"

#include "core/error.hpp"
#include "model/tensor_specs.hpp"

namespace moeflux {

ModelWeights ModelWeights::bind(const Package& pkg) {
  const ModelConfig& c = pkg.config();
  const size_t H = c.hidden_size;
  ModelWeights w;
  w.embed = pkg.matrix("embed_tokens.weight", c.vocab_size, H);
  w.lm_head = c.tie_word_embeddings ? w.embed : pkg.matrix("lm_head.weight", c.vocab_size, H);
  w.final_norm = pkg.vector("norm.weight", H);

  auto mlp = [&](const std::string& prefix, size_t inter) {
    MlpWeights m;
    m.gate = pkg.matrix(prefix + "gate_proj.weight", inter, H);
    m.up = pkg.matrix(prefix + "up_proj.weight", inter, H);
    m.down = pkg.matrix(prefix + "down_proj.weight", H, inter);
    return m;
  };

  for (int i = 0; i < c.num_layers; ++i) {
    auto L = [&](const std::string& rest) { return layer_tensor(i, rest); };
    LayerWeights l;
    l.kind = c.layer_kind[i];
    l.input_norm = pkg.vector(L("input_layernorm.weight"), H);
    l.post_norm = pkg.vector(L("post_attention_layernorm.weight"), H);
    if (l.kind == LayerKind::LatentAttention) {
      auto& m = l.mla;
      const size_t nh = c.num_heads, lora = c.kv_lora_rank, R = c.qk_rope_head_dim;
      if (c.q_lora_rank > 0) {
        m.q_a = pkg.matrix(L("self_attn.q_a_proj.weight"), c.q_lora_rank, H);
        m.q_a_norm = pkg.vector(L("self_attn.q_a_layernorm.weight"), c.q_lora_rank);
        m.q = pkg.matrix(L("self_attn.q_b_proj.weight"), nh * c.head_dim, c.q_lora_rank);
      } else {
        m.q = pkg.matrix(L("self_attn.q_proj.weight"), nh * c.head_dim, H);
      }
      m.kv_a = pkg.matrix(L("self_attn.kv_a_proj_with_mqa.weight"), lora + R, H);
      m.kv_a_norm = pkg.vector(L("self_attn.kv_a_layernorm.weight"), lora);
      m.k_absorb = pkg.matrix(L("self_attn.kv_b_proj.k_absorb"), nh * lora, c.qk_nope_head_dim);
      m.v_up = pkg.matrix(L("self_attn.kv_b_proj.v_up"), nh * c.v_head_dim, lora);
      m.o = pkg.matrix(L("self_attn.o_proj.weight"), H, nh * c.v_head_dim);
    } else if (l.kind == LayerKind::FullAttention) {
      const size_t q_rows = size_t(c.num_heads) * c.head_dim * (c.gated_attention() ? 2 : 1);
      const size_t kv_rows = size_t(c.num_kv_heads) * c.head_dim;
      auto& a = l.attn;
      a.q = pkg.matrix(L("self_attn.q_proj.weight"), q_rows, H);
      a.k = pkg.matrix(L("self_attn.k_proj.weight"), kv_rows, H);
      a.v = pkg.matrix(L("self_attn.v_proj.weight"), kv_rows, H);
      a.o = pkg.matrix(L("self_attn.o_proj.weight"), H, size_t(c.num_heads) * c.head_dim);
      if (c.attention_bias) {
        a.q_bias = pkg.vector(L("self_attn.q_proj.bias"), q_rows);
        a.k_bias = pkg.vector(L("self_attn.k_proj.bias"), kv_rows);
        a.v_bias = pkg.vector(L("self_attn.v_proj.bias"), kv_rows);
      }
      if (c.o_proj_bias()) a.o_bias = pkg.vector(L("self_attn.o_proj.bias"), H);
      if (c.qk_norm) {
        a.q_norm = pkg.vector(L("self_attn.q_norm.weight"), c.head_dim);
        a.k_norm = pkg.vector(L("self_attn.k_norm.weight"), c.head_dim);
      }
    } else {
      auto& d = l.lin;
      const size_t nv = c.linear_num_value_heads;
      d.qkv = pkg.matrix(L("linear_attn.in_proj_qkv.weight"), c.linear_conv_dim(), H);
      d.z = pkg.matrix(L("linear_attn.in_proj_z.weight"), c.linear_value_dim(), H);
      d.b = pkg.matrix(L("linear_attn.in_proj_b.weight"), nv, H);
      d.a = pkg.matrix(L("linear_attn.in_proj_a.weight"), nv, H);
      d.out = pkg.matrix(L("linear_attn.out_proj.weight"), H, c.linear_value_dim());
      const MatrixView conv =
          pkg.matrix(L("linear_attn.conv1d.weight"), c.linear_conv_dim(), c.linear_conv_kernel);
      if (conv.fmt.kind != QuantKind::F32)
        fail(pkg.dir() + ": conv1d weight of layer " + std::to_string(i) + " must be f32");
      d.conv = reinterpret_cast<const float*>(conv.data);
      d.dt_bias = pkg.vector(L("linear_attn.dt_bias"), nv);
      d.A_log = pkg.vector(L("linear_attn.A_log"), nv);
      d.norm = pkg.vector(L("linear_attn.norm.weight"), c.linear_value_head_dim);
    }
    l.is_moe = c.layer_is_moe[i];
    if (l.is_moe) {
      l.moe.router = pkg.matrix(L("mlp.gate.weight"), c.num_experts, H);
      if (c.grouped_router())
        l.moe.router_bias = pkg.vector(L("mlp.gate.e_score_correction_bias"), c.num_experts);
      if (c.shared_expert_intermediate_size > 0) {
        l.moe.has_shared = true;
        l.moe.shared_gated = c.shared_expert_gate;
        l.moe.shared = mlp(L(c.shared_expert_gate ? "mlp.shared_expert." : "mlp.shared_experts."),
                           c.shared_expert_intermediate_size);
        if (c.shared_expert_gate)
          l.moe.shared_gate = pkg.matrix(L("mlp.shared_expert_gate.weight"), 1, H);
      }
    } else {
      l.dense = mlp(L("mlp."), c.intermediate_size);
    }
    w.layers.push_back(l);
  }
  return w;
}

namespace {

// Visits every weight pointer of a layer (every field of the weight structs: a new field must
// be listed here, or a backend with its own copy of the weights would read host memory).
template <class F>
void for_each_matrix(LayerWeights& l, F&& f) {
  for (MatrixView* m :
       {&l.attn.q, &l.attn.k, &l.attn.v, &l.attn.o, &l.lin.qkv, &l.lin.z, &l.lin.b, &l.lin.a,
        &l.lin.out, &l.moe.router, &l.moe.shared.gate, &l.moe.shared.up, &l.moe.shared.down,
        &l.moe.shared_gate, &l.dense.gate, &l.dense.up, &l.dense.down, &l.mla.q_a, &l.mla.q,
        &l.mla.kv_a, &l.mla.k_absorb, &l.mla.v_up, &l.mla.o})
    f(*m);
}
template <class F>
void for_each_vector(LayerWeights& l, F&& f) {
  for (const float** v :
       {&l.input_norm, &l.post_norm, &l.attn.q_bias, &l.attn.k_bias, &l.attn.v_bias, &l.attn.o_bias,
        &l.attn.q_norm, &l.attn.k_norm, &l.lin.conv, &l.lin.dt_bias, &l.lin.A_log, &l.lin.norm,
        &l.moe.router_bias, &l.mla.q_a_norm, &l.mla.kv_a_norm})
    f(*v);
}

}  // namespace

ModelWeights ModelWeights::rebased(const uint8_t* from, size_t bytes, const uint8_t* to) const {
  auto move = [&](const uint8_t* p) -> const uint8_t* {
    if (p == nullptr) return p;
    MF_ASSERT(p >= from && p < from + bytes);
    return to + (p - from);
  };
  auto matrix = [&](MatrixView& m) {
    m.data = move(m.data);
    m.scales = move(m.scales);
    m.biases = move(m.biases);
  };
  auto vector = [&](const float*& v) {
    v = reinterpret_cast<const float*>(move(reinterpret_cast<const uint8_t*>(v)));
  };
  ModelWeights w = *this;
  matrix(w.embed);
  matrix(w.lm_head);
  vector(w.final_norm);
  for (LayerWeights& l : w.layers) {
    for_each_matrix(l, matrix);
    for_each_vector(l, vector);
  }
  return w;
}

}  // namespace moeflux
