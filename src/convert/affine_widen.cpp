#include "convert/affine_widen.hpp"

#include <cmath>
#include <cstring>

#include "core/dtype.hpp"
#include "core/error.hpp"

namespace moeflux {

namespace {

// Code j of a row stored as a little-endian bit stream of `bits`-bit codes.
uint32_t code_at(const uint8_t* row, size_t j, int bits) {
  const size_t bit = j * static_cast<size_t>(bits);
  uint32_t window = 0;  // the (at most) 2 bytes that hold the code
  std::memcpy(&window, row + bit / 8, (bit % 8 + bits + 7) / 8);
  return (window >> (bit % 8)) & ((1u << bits) - 1);
}

void put_code(uint8_t* row, size_t j, int bits, uint32_t q) {
  // 4- and 8-bit codes never straddle a byte.
  const size_t bit = j * static_cast<size_t>(bits);
  uint8_t& byte = row[bit / 8];
  const int shift = static_cast<int>(bit % 8);
  byte = static_cast<uint8_t>((byte & ~(((1u << bits) - 1) << shift)) | (q << shift));
}

}  // namespace

bool is_mlx_affine_bits(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8;
}

QuantFormat widened_format(QuantFormat src) {
  return QuantFormat::affine(src.bits <= 4 ? 4 : 8, src.group);
}

bool widens_exactly(QuantFormat src, QuantFormat dst) {
  return src.kind == QuantKind::Affine && dst.kind == QuantKind::Affine &&
         is_mlx_affine_bits(src.bits) && (dst.bits == 4 || dst.bits == 8) && dst.bits >= src.bits &&
         dst.group > 0 && src.group % dst.group == 0;
}

void widen_affine(const MatrixView& src, QuantFormat dst, uint8_t* out) {
  MF_ASSERT(widens_exactly(src.fmt, dst));
  const size_t rows = src.rows, cols = src.cols;
  const MatrixLayout dl = matrix_layout(dst, rows, cols);
  const int k = dst.bits - src.fmt.bits;
  const size_t src_row = cols * static_cast<size_t>(src.fmt.bits) / 8;
  const size_t split = static_cast<size_t>(src.fmt.group / dst.group);
  const size_t src_groups = cols / static_cast<size_t>(src.fmt.group);
  std::memset(out + dl.data_offset, 0, dl.data_bytes);
  for (size_t r = 0; r < rows; ++r) {
    const uint8_t* in = src.data + r * src_row;
    uint8_t* o = out + dl.data_offset + r * row_data_bytes(dst, cols);
    for (size_t j = 0; j < cols; ++j) put_code(o, j, dst.bits, code_at(in, j, src.fmt.bits) << k);
    for (size_t g = 0; g < src_groups; ++g) {
      uint16_t s, b;
      std::memcpy(&s, src.scales + (r * src_groups + g) * 2, 2);
      std::memcpy(&b, src.biases + (r * src_groups + g) * 2, 2);
      const float scaled = std::ldexp(bf16_to_f32(s), -k);
      const uint16_t s2 = f32_to_bf16(scaled);
      if (std::isfinite(scaled) && std::ldexp(bf16_to_f32(s2), k) != bf16_to_f32(s))
        fail("an affine scale is too small to re-encode exactly at " + std::to_string(dst.bits) +
             " bits");
      for (size_t h = 0; h < split; ++h) {
        const size_t at = (r * src_groups + g) * split + h;
        std::memcpy(out + dl.scales_offset + at * 2, &s2, 2);
        std::memcpy(out + dl.biases_offset + at * 2, &b, 2);
      }
    }
  }
}

}  // namespace moeflux
