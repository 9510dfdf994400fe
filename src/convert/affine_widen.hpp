// MLX affine matrices of the widths mlx writes (2, 3, 4, 5, 6 or 8 bits per code) re-encoded,
// exactly, at a width the package formats hold (4 or 8 bits) and a group size that divides
// theirs.
//
// Storage of the source (MLX): element j of a row sits at bits [b*j, b*j + b) of the row's
// little-endian byte stream. For 2, 4 and 8 bits that is the uint32 word packing of
// core/quant_format.hpp; for 3, 5 and 6 bits it is how MLX packs 8, 8 and 4 codes into 3, 5 and
// 3 bytes.
//
// The math: value = q * s + bias. With k = B - b, the codes q' = q * 2^k (at most 2^B - 2^k)
// and scales s' = s / 2^k give q' * s' + bias = q * s + bias exactly: s / 2^k changes only the
// exponent of a bf16 number (checked: a scale too small for that fails). A group of g elements
// becomes g / G groups with the same scale and bias.
#pragma once

#include <cstdint>

#include "core/quant_format.hpp"

namespace moeflux {

// Code widths an MLX checkpoint may use.
bool is_mlx_affine_bits(int bits);
// The package format a source affine format widens to: 4 bits for 2..4, 8 for 5..8; same group.
QuantFormat widened_format(QuantFormat src);
// True when `src` re-encodes exactly as `dst` (both affine, dst.bits 4 or 8 and >= src.bits,
// dst.group dividing src.group).
bool widens_exactly(QuantFormat src, QuantFormat dst);
// Writes `src` in format `dst` (widens_exactly(src.fmt, dst)) into `out`
// (matrix_layout(dst, rows, cols).total_bytes bytes). Throws moeflux::Error if a scale cannot be
// divided exactly.
void widen_affine(const MatrixView& src, QuantFormat dst, uint8_t* out);

}  // namespace moeflux
