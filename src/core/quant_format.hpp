// Storage formats of weight matrices, and the byte layout of one matrix.
//
// A matrix W[rows, cols] (row-major, y = W x) is stored as up to three contiguous sections:
//   data   : the element codes, row-major, row_data_bytes(fmt, cols) bytes per row;
//   scales : per-group scales, row-major [rows, cols / group], 2 bytes each;
//   biases : per-group biases (Affine only), row-major [rows, cols / group], bf16.
//
// Formats:
//   F32    : data = float32.                                       value = x
//   F16    : data = IEEE binary16.                                 value = x
//   BF16   : data = bfloat16.                                      value = x
//   Q8_0   : data = int8, scales = f16 per group of 32.            value = q * scale
//   Affine : data = `bits`-bit unsigned codes packed little-endian into uint32 words
//            (element j of a word sits at bits [bits*j, bits*j+bits)), scales and biases bf16
//            per group of `group`.                                 value = q * scale + bias
//            This is MLX's affine quantization; "q4" = Affine{bits 4, group 64}.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moeflux {

enum class QuantKind : uint8_t { F32, F16, BF16, Q8_0, Affine };

struct QuantFormat {
  QuantKind kind = QuantKind::F32;
  int bits = 0;   // Affine only: 4 or 8
  int group = 0;  // Q8_0: 32; Affine: 32, 64 or 128

  static QuantFormat f32() { return {QuantKind::F32, 32, 0}; }
  static QuantFormat f16() { return {QuantKind::F16, 16, 0}; }
  static QuantFormat bf16() { return {QuantKind::BF16, 16, 0}; }
  static QuantFormat q8_0() { return {QuantKind::Q8_0, 8, 32}; }
  static QuantFormat affine(int bits, int group) { return {QuantKind::Affine, bits, group}; }
  static QuantFormat q4() { return affine(4, 64); }

  bool operator==(const QuantFormat&) const = default;
};

// Canonical names: "f32", "f16", "bf16", "q8_0", "q4" (affine 4-bit group 64), otherwise
// "affine<bits>g<group>" (e.g. "affine8g64").
std::string format_name(QuantFormat fmt);
// Parses a canonical name; throws moeflux::Error on an unknown one.
QuantFormat parse_format(const std::string& name);

// True when `cols` is a legal row length for the format (a multiple of the group, and for
// Affine a whole number of uint32 words).
bool format_accepts_cols(QuantFormat fmt, size_t cols);

size_t row_data_bytes(QuantFormat fmt, size_t cols);
size_t row_scale_bytes(QuantFormat fmt, size_t cols);  // 0 for unscaled formats
size_t row_bias_bytes(QuantFormat fmt, size_t cols);   // nonzero for Affine only

// Offsets of the sections of one stored matrix, relative to its first byte.
struct MatrixLayout {
  size_t data_offset = 0, data_bytes = 0;
  size_t scales_offset = 0, scales_bytes = 0;
  size_t biases_offset = 0, biases_bytes = 0;
  size_t total_bytes = 0;
};
MatrixLayout matrix_layout(QuantFormat fmt, size_t rows, size_t cols);

// A read-only view of one stored matrix W[rows, cols].
struct MatrixView {
  QuantFormat fmt;
  size_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
  const uint8_t* scales = nullptr;  // null unless Q8_0 / Affine
  const uint8_t* biases = nullptr;  // null unless Affine

  // Views a contiguous record laid out by matrix_layout().
  static MatrixView from_record(QuantFormat fmt, size_t rows, size_t cols, const uint8_t* base);
  // Rows [begin, begin + n) as a matrix of their own (the caller keeps begin + n <= rows).
  MatrixView row_slice(size_t begin, size_t n) const;
};

}  // namespace moeflux
