// The converter's derived matrices (model/tensor_specs.hpp, Derive): a package matrix built from
// a checkpoint matrix rather than copied, for MLA (deepseek_v3).
#pragma once

#include <cstdint>
#include <vector>

#include "core/quant_format.hpp"
#include "model/config.hpp"
#include "model/tensor_specs.hpp"

namespace moeflux {

struct DerivedMatrix {
  std::vector<uint8_t> bytes;  // the record `view` points into
  MatrixView view;
};

// spec.derive applied to `src` (the checkpoint's spec.source, any format):
//   DeinterleaveRope: rows permuted, in src's own format (rows are independent in every format);
//   KvbKeysAbsorbed, KvbValues: f32 (exactly src's values), for the caller to store in its
//   format.
DerivedMatrix derive_matrix(const TensorSpec& spec, const MatrixView& src, const ModelConfig& c);

// The shape of spec.source in the checkpoint: spec's own for DeinterleaveRope, kv_b_proj's
// [nh (nope + v), kv_lora_rank] for the kv_b splits.
std::vector<int64_t> derive_source_shape(const TensorSpec& spec, const ModelConfig& c);

}  // namespace moeflux
