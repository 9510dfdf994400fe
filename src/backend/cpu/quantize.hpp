// Quantization of float matrices into the stored formats (core/quant_format.hpp).
//
// The algorithms are a contract: a Python fixture generator reproduces them bit-exactly, so each
// step is float32 arithmetic in the order written, rounding by std::nearbyint (round half to
// even under the default rounding mode), bf16/f16 conversions round-to-nearest-even.
//   F32/F16/BF16: plain conversion.
//   Q8_0, per group of 32 values x:
//     amax = max|x|;  d = amax / 127.0f;  d16 = f16(d);  dd = float(d16);
//     q = dd == 0 ? 0 : clamp(nearbyint(x / dd), -127, 127);  stores d16.
//   Affine(bits b, group g), per group:
//     mn = min x;  mx = max x;  s = bf16_round((mx - mn) / float(2^b - 1));  bb = bf16_round(mn);
//     q = s == 0 ? 0 : clamp(nearbyint((x - bb) / s), 0, 2^b - 1);  stores bf16 s and bf16 bb.
//   (bf16_round(v) = bf16_to_f32(f32_to_bf16(v)).)
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/quant_format.hpp"

namespace moeflux::cpu {

// Writes src[rows, cols] (row-major floats) as one record of matrix_layout(fmt, rows, cols)
// (total_bytes bytes) at out_record: data section, then scales, then biases.
// Preconditions (MF_ASSERT): format_accepts_cols(fmt, cols); Q8_0 group 32; Affine bits 4 or 8
// and group 32, 64 or 128; src and out_record non-null when rows > 0. src values must be finite
// (not checked: the converter validates its input).
void quantize_matrix(QuantFormat fmt, const float* src, size_t rows, size_t cols,
                     uint8_t* out_record);

}  // namespace moeflux::cpu
