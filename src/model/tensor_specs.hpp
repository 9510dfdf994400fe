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

struct TensorSpec {
  std::string name;            // relative to the text model: "layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // stored shape
  TensorRole role;
  // A Matrix whose outputs decide routing (router, shared-expert gate): rounding can flip a
  // top-k choice, so it keeps the checkpoint's format when other matrices are requantized.
  bool routing = false;
};

std::vector<TensorSpec> resident_tensor_specs(const ModelConfig& c);

// The format a resident matrix is stored in, given its source format and the one asked for
// (convert/synth --resident; empty = keep): routing matrices, and matrices whose width the
// asked format cannot split into its blocks, keep the source format.
QuantFormat resident_matrix_format(const TensorSpec& spec, QuantFormat source,
                                   std::optional<QuantFormat> wanted);

// "layers.<layer>.<rest>"
std::string layer_tensor(int layer, const std::string& rest);

}  // namespace moeflux
