// The resident (non-expert) tensors a model of a given config must have: names, shapes and how
// they are stored. The converter fetches exactly these from a checkpoint; the runtime binds
// exactly these from a package. One list, so the two cannot disagree.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/quant_format.hpp"
#include "model/config.hpp"

namespace moeflux {

enum class TensorRole {
  Matrix,  // [rows, cols], y = W x; keeps the checkpoint's format (or MLX affine)
  Vector,  // [n], stored f32
  Conv,    // depthwise conv1d weight: checkpoint [C, 1, K] (or MLX [C, K, 1]); stored f32 [C, K]
};

// How the converter makes a matrix from the checkpoint's (the runtime binds the result by name
// and never needs to know). MLA (deepseek_v3), with nh heads, nope / rope / v head dims and
// kv_lora_rank L:
enum class Derive {
  None,
  // The checkpoint matrix `source`'s rows with, in every block of `block` rows, the last
  // qk_rope_head_dim rows de-interleaved (rows 0, 2, 4, ... then 1, 3, 5, ... of that range):
  // checkpoints with rope_interleave hold rotary pairs (x[2i], x[2i+1]); transformers
  // de-interleaves q and k before its rotate_half rope, the package stores them de-interleaved.
  DeinterleaveRope,
  // From kv_b_proj [nh (nope + v), L]: head h's key up-projection transposed,
  //   k_absorb[h L + j, i] = kv_b[h (nope + v) + i, j]   -> [nh L, nope]
  // so that q_latent[h] = k_absorb_h q_nope[h] (the absorbed query of MLA decode).
  KvbKeysAbsorbed,
  // Head h's value up-projection:  v_up[h v + d, :] = kv_b[h (nope + v) + nope + d, :] -> [nh v, L].
  KvbValues,
};

struct TensorSpec {
  std::string name;            // relative to the text model: "layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // stored shape
  TensorRole role = TensorRole::Matrix;
  // A Matrix whose outputs decide routing (router, shared-expert gate): rounding can flip a
  // top-k choice, so it keeps the checkpoint's format when other matrices are requantized.
  bool routing = false;
  Derive derive = Derive::None;
  std::string source = {};  // the checkpoint tensor a derived matrix comes from
  int64_t block = 0;   // Derive::DeinterleaveRope: rows per block
};

std::vector<TensorSpec> resident_tensor_specs(const ModelConfig& c);

// The format a resident matrix is stored in, given its source format and the one asked for
// (convert/synth --resident; empty = keep): routing matrices, and matrices whose width the
// asked format cannot split into its blocks, keep the source format.
QuantFormat resident_matrix_format(const TensorSpec& spec, QuantFormat source,
                                   std::optional<QuantFormat> wanted);

// "layers.<layer>.<rest>"
std::string layer_tensor(int layer, const std::string& rest);

// Parameters of the model a config describes (the text model as converted: multi-token
// prediction layers, which conversion skips, are not counted). Resident tensors as
// resident_tensor_specs lists them (MLA's kv_b_proj counted once, as its two derived halves),
// plus 3 * hidden * moe_intermediate per routed expert.
struct ParameterCounts {
  uint64_t total = 0;
  uint64_t active = 0;     // per token: every resident tensor + top_k routed experts per MoE layer
  uint64_t embedding = 0;  // embed_tokens (a lookup: a token reads one row of it)
  uint64_t lm_head = 0;    // 0 when tied to the embedding
};
ParameterCounts count_parameters(const ModelConfig& c);

// One line for `inspect` and `synth`: total and active parameters, and the active count without
// the embedding table and without the LM head too (publishers count active parameters either
// way; a model with tied embeddings gets total and active only), e.g. "671.0 B total, 37.6 B active
// per token (36.6 B without the embedding table, 35.7 B without it and the LM head)".
std::string describe_parameters(const ModelConfig& c);

}  // namespace moeflux
