// quantize_matrix: the contract algorithms of quantize.hpp, one row at a time.
#include "backend/cpu/quantize.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "core/dtype.hpp"
#include "core/error.hpp"

namespace moeflux::cpu {

static_assert(std::endian::native == std::endian::little,
              "stored formats are little-endian; a big-endian host needs byte swaps here");

namespace {

void store_u16(uint8_t* p, uint16_t v) {
  std::memcpy(p, &v, sizeof v);
}
void store_u32(uint8_t* p, uint32_t v) {
  std::memcpy(p, &v, sizeof v);
}

float bf16_round(float v) {
  return bf16_to_f32(f32_to_bf16(v));
}

// One Q8_0 row: codes (cols int8) and scales (cols/32 f16).
void quantize_row_q8_0(const float* x, size_t cols, uint8_t* codes, uint8_t* scales) {
  for (size_t g = 0; g < cols / 32; ++g) {
    const float* xg = x + 32 * g;
    float amax = 0.0f;
    for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xg[j]));
    const float d = amax / 127.0f;
    const uint16_t d16 = f32_to_f16(d);
    const float dd = f16_to_f32(d16);
    for (size_t j = 0; j < 32; ++j) {
      const float q = dd == 0.0f ? 0.0f : std::clamp(std::nearbyint(xg[j] / dd), -127.0f, 127.0f);
      codes[32 * g + j] = static_cast<uint8_t>(static_cast<int8_t>(q));
    }
    store_u16(scales + 2 * g, d16);
  }
}

// One Affine row: codes packed into uint32 words (element j of a word at bits [bits*j, ...)),
// bf16 scales and biases per group.
void quantize_row_affine(const float* x, size_t cols, int bits, size_t group, uint8_t* codes,
                         uint8_t* scales, uint8_t* biases) {
  const size_t per_word = 32 / static_cast<size_t>(bits);
  const float qmax = static_cast<float>((1 << bits) - 1);
  for (size_t g = 0; g < cols / group; ++g) {
    const float* xg = x + group * g;
    float mn = xg[0], mx = xg[0];
    for (size_t j = 1; j < group; ++j) {
      mn = std::min(mn, xg[j]);
      mx = std::max(mx, xg[j]);
    }
    const float s = bf16_round((mx - mn) / qmax);
    const float bb = bf16_round(mn);
    // group is a multiple of per_word, so the group's words are whole.
    for (size_t w = 0; w < group / per_word; ++w) {
      uint32_t word = 0;
      for (size_t j = 0; j < per_word; ++j) {
        const float v = xg[w * per_word + j];
        const float q = s == 0.0f ? 0.0f : std::clamp(std::nearbyint((v - bb) / s), 0.0f, qmax);
        word |= static_cast<uint32_t>(q) << (static_cast<size_t>(bits) * j);
      }
      store_u32(codes + 4 * (g * group / per_word + w), word);
    }
    store_u16(scales + 2 * g, f32_to_bf16(s));
    store_u16(biases + 2 * g, f32_to_bf16(bb));
  }
}

}  // namespace

void quantize_matrix(QuantFormat fmt, const float* src, size_t rows, size_t cols,
                     uint8_t* out_record) {
  MF_ASSERT(format_accepts_cols(fmt, cols));
  if (fmt.kind == QuantKind::Q8_0) MF_ASSERT(fmt.group == 32);
  if (fmt.kind == QuantKind::Affine) {
    MF_ASSERT(fmt.group == 32 || fmt.group == 64 || fmt.group == 128);
  }
  if (rows == 0) return;
  MF_ASSERT(src != nullptr && out_record != nullptr);
  const MatrixLayout l = matrix_layout(fmt, rows, cols);
  uint8_t* data = out_record + l.data_offset;
  uint8_t* scales = out_record + l.scales_offset;
  uint8_t* biases = out_record + l.biases_offset;
  const size_t ds = row_data_bytes(fmt, cols), ss = row_scale_bytes(fmt, cols);
  for (size_t r = 0; r < rows; ++r) {
    const float* x = src + r * cols;
    uint8_t* d = data + r * ds;
    switch (fmt.kind) {
      case QuantKind::F32:
        std::memcpy(d, x, cols * sizeof(float));
        break;
      case QuantKind::F16:
        for (size_t c = 0; c < cols; ++c) store_u16(d + 2 * c, f32_to_f16(x[c]));
        break;
      case QuantKind::BF16:
        for (size_t c = 0; c < cols; ++c) store_u16(d + 2 * c, f32_to_bf16(x[c]));
        break;
      case QuantKind::Q8_0:
        quantize_row_q8_0(x, cols, d, scales + r * ss);
        break;
      case QuantKind::Affine:
        quantize_row_affine(x, cols, fmt.bits, static_cast<size_t>(fmt.group), d, scales + r * ss,
                            biases + r * ss);
        break;
    }
  }
}

}  // namespace moeflux::cpu
