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
  const float *q_norm = nullptr, *k_norm = nullptr;  // [head_dim]
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
  MatrixView router;  // [num_experts, hidden]
  bool has_shared = false;
  MlpWeights shared;
  MatrixView shared_gate;  // [1, hidden]
};

struct LayerWeights {
  LayerKind kind = LayerKind::FullAttention;
  const float* input_norm = nullptr;
  const float* post_norm = nullptr;
  AttentionWeights attn;
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
