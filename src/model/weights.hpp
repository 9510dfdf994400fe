// Resident weights bound from a package: views into the mapped resident.bin. Binding checks
// every name and shape (Package::matrix / Package::vector) so a mismatch fails at load with
// expected vs found, never during a forward pass.
#pragma once

#include <vector>

#include "backend/backend.hpp"
#include "core/quant_format.hpp"
#include "formats/package.hpp"

namespace moeflux {

struct AttentionWeights {
  MatrixView q, k, v, o;  // q: [heads*head_dim (x2 when gated: query|gate per head), hidden]
  const float *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr, *o_bias = nullptr;
  const float *q_norm = nullptr, *k_norm = nullptr;  // [head_dim], null without q/k norm
};

// Multi-head latent attention (deepseek_v3) as the package stores it: rope rows de-interleaved,
// kv_b_proj split per head for the absorbed products (tensor_specs.hpp, Derive). nh heads,
// qk = qk_nope + qk_rope, L = kv_lora_rank, R = qk_rope_head_dim, v = v_head_dim.
struct LatentAttentionWeights {
  MatrixView q_a;                    // [q_lora, H], when q_lora_rank > 0
  const float* q_a_norm = nullptr;   // [q_lora]
  MatrixView q;                      // q_b_proj [nh qk, q_lora], or q_proj [nh qk, H]
  MatrixView kv_a;                   // [L + R, H]: latent | rope key
  const float* kv_a_norm = nullptr;  // [L]
  MatrixView k_absorb;               // [nh L, nope]: head h's key up-projection, transposed
  MatrixView v_up;                   // [nh v, L]: head h's value up-projection
  MatrixView o;                      // [H, nh v]
};

// Gated DeltaNet (linear attention) of qwen3_5_moe.
struct DeltaNetWeights {
  MatrixView qkv;               // [2*key_dim + value_dim, hidden]: q | k | v channels
  MatrixView z;                 // [value_dim, hidden]: output gate
  MatrixView b;                 // [v_heads, hidden]: beta = sigmoid(b x)
  MatrixView a;                 // [v_heads, hidden]: g = -exp(A_log) * softplus(a x + dt_bias)
  MatrixView out;               // [hidden, value_dim]
  const float* conv = nullptr;  // [conv_dim, kernel]
  const float* dt_bias = nullptr;
  const float* A_log = nullptr;
  const float* norm = nullptr;  // [value_head_dim], plain (not zero-centred) weight
};

struct MoeWeights {
  MatrixView router;                   // [num_experts, hidden]
  const float* router_bias = nullptr;  // [num_experts] e_score_correction_bias (grouped router)
  bool has_shared = false;
  MlpWeights shared;
  bool shared_gated = false;  // shared output *= sigmoid(shared_gate x)
  MatrixView shared_gate;     // [1, hidden]
};

struct LayerWeights {
  LayerKind kind = LayerKind::FullAttention;
  const float* input_norm = nullptr;
  const float* post_norm = nullptr;
  AttentionWeights attn;
  LatentAttentionWeights mla;
  DeltaNetWeights lin;
  bool is_moe = false;
  MoeWeights moe;
  MlpWeights dense;
};

struct ModelWeights {
  MatrixView embed;    // [vocab, hidden]
  MatrixView lm_head;  // [vocab, hidden]; the embedding when tied
  const float* final_norm = nullptr;
  std::vector<LayerWeights> layers;

  static ModelWeights bind(const Package& pkg);

  // The same weights at another address of the resident bytes: every pointer p inside
  // [from, from + bytes) becomes to + (p - from) (a backend's device copy of resident.bin).
  ModelWeights rebased(const uint8_t* from, size_t bytes, const uint8_t* to) const;
};

}  // namespace moeflux
