// The resident (non-expert) tensors a model of a given config must have: names, shapes and how
// they are stored. The converter fetches exactly these from a checkpoint; the runtime binds
// exactly these from a package. One list, so the two cannot disagree.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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
};

std::vector<TensorSpec> resident_tensor_specs(const ModelConfig& c);

// "layers.<layer>.<rest>"
std::string layer_tensor(int layer, const std::string& rest);

}  // namespace moeflux
