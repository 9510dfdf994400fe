// quantize_matrix (backend/cpu/quantize.hpp): the contract algorithms, bit for bit, and the
// error bounds they imply.
#include "backend/cpu/quantize.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/matvec.hpp"
#include "core/dtype.hpp"

namespace moeflux::cpu {
namespace {

constexpr uint8_t kGuard = 0xAB;  // written past the record; must survive

uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// A quantized record with a guard tail, and accessors for its stored fields.
struct Quantized {
  QuantFormat fmt;
  size_t rows, cols;
  MatrixLayout layout;
  std::vector<uint8_t> buf;
  MatrixView view;

  Quantized(QuantFormat f, const std::vector<float>& src, size_t r, size_t c)
      : fmt(f), rows(r), cols(c), layout(matrix_layout(f, r, c)) {
    buf.assign(layout.total_bytes + 64, kGuard);
    quantize_matrix(fmt, src.data(), rows, cols, buf.data());
    view = MatrixView::from_record(fmt, rows, cols, buf.data());
  }
  bool guard_intact() const {
    return std::all_of(buf.begin() + static_cast<ptrdiff_t>(layout.total_bytes), buf.end(),
                       [](uint8_t b) { return b == kGuard; });
  }
  // Code of element (r, c): int8 for Q8_0, the unsigned bit field for Affine.
  int code(size_t r, size_t c) const {
    const size_t i = r * cols + c;
    if (fmt.kind == QuantKind::Q8_0) return static_cast<int8_t>(view.data[i]);
    const size_t bits = static_cast<size_t>(fmt.bits), per_word = 32 / bits;
    return static_cast<int>((rd32(view.data + 4 * (i / per_word)) >> (bits * (i % per_word))) &
                            ((1u << bits) - 1u));
  }
  size_t group_index(size_t r, size_t c) const {
    return (r * cols + c) / static_cast<size_t>(fmt.group);
  }
  uint16_t scale_bits(size_t r, size_t c) const {
    return rd16(view.scales + 2 * group_index(r, c));
  }
  uint16_t bias_bits(size_t r, size_t c) const { return rd16(view.biases + 2 * group_index(r, c)); }
  float scale(size_t r, size_t c) const {
    return fmt.kind == QuantKind::Q8_0 ? f16_to_f32(scale_bits(r, c))
                                       : bf16_to_f32(scale_bits(r, c));
  }
  float bias(size_t r, size_t c) const { return bf16_to_f32(bias_bits(r, c)); }
  // The format's formula for W[r,c], in float.
  float formula(size_t r, size_t c) const {
    if (fmt.kind == QuantKind::Q8_0) return static_cast<float>(code(r, c)) * scale(r, c);
    return static_cast<float>(code(r, c)) * scale(r, c) + bias(r, c);
  }
  std::vector<float> dequantized() const {
    std::vector<float> out(rows * cols, std::nanf(""));
    for (size_t r = 0; r < rows; ++r) dequantize_row(view, r, out.data() + r * cols);
    return out;
  }
};

// Rows of uniform(-1, 1) values times a per-row magnitude 10^e, e uniform in [min_exp, 2];
// every third row all negative. Never zero.
std::vector<float> random_matrix(size_t rows, size_t cols, std::mt19937& rng,
                                 float min_exp = -3.0f) {
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f), exponent(min_exp, 2.0f);
  std::vector<float> m(rows * cols);
  for (size_t r = 0; r < rows; ++r) {
    const float mag = std::pow(10.0f, exponent(rng));
    const bool negative = r % 3 == 2;
    for (size_t c = 0; c < cols; ++c) {
      const float u = unit(rng);
      m[r * cols + c] = mag * (negative ? -0.5f * (u + 1.5f) : u);
    }
  }
  return m;
}

const QuantFormat kAffineFormats[] = {QuantFormat::q4(),           QuantFormat::affine(4, 32),
                                      QuantFormat::affine(4, 128), QuantFormat::affine(8, 32),
                                      QuantFormat::affine(8, 64),  QuantFormat::affine(8, 128)};

TEST(Quantize, PlainFormatsAreConversions) {
  std::mt19937 rng(11);
  const size_t rows = 7, cols = 45;
  const std::vector<float> src = random_matrix(rows, cols, rng);
  for (QuantFormat fmt : {QuantFormat::f32(), QuantFormat::f16(), QuantFormat::bf16()}) {
    Quantized q(fmt, src, rows, cols);
    ASSERT_TRUE(q.guard_intact()) << format_name(fmt);
    for (size_t i = 0; i < rows * cols; ++i) {
      if (fmt.kind == QuantKind::F32) {
        float v;
        std::memcpy(&v, q.view.data + 4 * i, 4);
        ASSERT_EQ(v, src[i]);
      } else if (fmt.kind == QuantKind::F16) {
        ASSERT_EQ(rd16(q.view.data + 2 * i), f32_to_f16(src[i])) << i;
      } else {
        ASSERT_EQ(rd16(q.view.data + 2 * i), f32_to_bf16(src[i])) << i;
      }
    }
  }
}

// An independent transcription of the contract (quantize.hpp), element by element.
struct Expected {
  int code;
  uint16_t scale, bias;
};

Expected expected_q8_0(const float* group, size_t j) {
  float amax = 0.0f;
  for (size_t k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(group[k]));
  const uint16_t d16 = f32_to_f16(amax / 127.0f);
  const float dd = f16_to_f32(d16);
  int q = 0;
  if (dd != 0.0f) q = static_cast<int>(std::clamp(std::nearbyint(group[j] / dd), -127.0f, 127.0f));
  return {q, d16, 0};
}

Expected expected_affine(const float* group, size_t g, size_t j, int bits) {
  const float mn = *std::min_element(group, group + g), mx = *std::max_element(group, group + g);
  const float qmax = static_cast<float>((1 << bits) - 1);
  const uint16_t s16 = f32_to_bf16((mx - mn) / qmax), b16 = f32_to_bf16(mn);
  const float s = bf16_to_f32(s16), bb = bf16_to_f32(b16);
  int q = 0;
  if (s != 0.0f) q = static_cast<int>(std::clamp(std::nearbyint((group[j] - bb) / s), 0.0f, qmax));
  return {q, s16, b16};
}

TEST(Quantize, RecordsFollowTheContractBitForBit) {
  std::mt19937 rng(12);
  std::vector<QuantFormat> formats(std::begin(kAffineFormats), std::end(kAffineFormats));
  formats.push_back(QuantFormat::q8_0());
  for (QuantFormat fmt : formats) {
    const size_t g = static_cast<size_t>(fmt.group), rows = 5, cols = 3 * 128;
    const std::vector<float> src = random_matrix(rows, cols, rng);
    Quantized q(fmt, src, rows, cols);
    ASSERT_TRUE(q.guard_intact()) << format_name(fmt);
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) {
        const float* group = src.data() + r * cols + c / g * g;
        const Expected e = fmt.kind == QuantKind::Q8_0 ? expected_q8_0(group, c % g)
                                                       : expected_affine(group, g, c % g, fmt.bits);
        ASSERT_EQ(q.code(r, c), e.code) << format_name(fmt) << " r=" << r << " c=" << c;
        ASSERT_EQ(q.scale_bits(r, c), e.scale) << format_name(fmt) << " r=" << r << " c=" << c;
        if (fmt.kind == QuantKind::Affine) {
          ASSERT_EQ(q.bias_bits(r, c), e.bias);
        }
      }
    }
  }
}

TEST(Quantize, DequantizeEqualsFormula) {
  std::mt19937 rng(13);
  std::vector<QuantFormat> formats(std::begin(kAffineFormats), std::end(kAffineFormats));
  formats.push_back(QuantFormat::q8_0());
  for (QuantFormat fmt : formats) {
    const size_t rows = 6, cols = 256;
    const std::vector<float> src = random_matrix(rows, cols, rng);
    Quantized q(fmt, src, rows, cols);
    const std::vector<float> deq = q.dequantized();
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) {
        ASSERT_EQ(deq[r * cols + c], q.formula(r, c)) << format_name(fmt) << " " << r << "," << c;
      }
    }
  }
}

TEST(Quantize, Q8_0RoundTripWithinHalfStep) {
  std::mt19937 rng(14);
  const size_t rows = 40, cols = 512;
  // Magnitudes ≥ 0.1 keep d = amax / 127 in f16's normal range (≥ 2^-14; below it d is
  // subnormal, its relative rounding grows, and so does the clamp error 127·|d - dd|).
  const std::vector<float> src = random_matrix(rows, cols, rng, -1.0f);
  Quantized q(QuantFormat::q8_0(), src, rows, cols);
  const std::vector<float> deq = q.dequantized();
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      const float x = src[r * cols + c], d = q.scale(r, c);
      // |x - q d| ≤ d/2 by rounding (the clamp at ±127 costs at most 127·|d - amax/127| ≈
      // 127 · 2^-11 d < d/2); tiny covers the float rounding of x / d and of q·d.
      const float tiny = 1e-6f * std::fabs(x) + 1e-30f;
      ASSERT_LE(std::fabs(x - deq[r * cols + c]), d / 2 + tiny) << r << "," << c;
    }
  }
}

TEST(Quantize, AffineRoundTripWithinHalfStepPlusRounding) {
  std::mt19937 rng(15);
  for (QuantFormat fmt : kAffineFormats) {
    const size_t g = static_cast<size_t>(fmt.group), rows = 30, cols = 512;
    const float qmax = static_cast<float>((1 << fmt.bits) - 1);
    const std::vector<float> src = random_matrix(rows, cols, rng);
    Quantized q(fmt, src, rows, cols);
    ASSERT_TRUE(q.guard_intact());
    const std::vector<float> deq = q.dequantized();
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) {
        const float* group = src.data() + r * cols + c / g * g;
        const float mn = *std::min_element(group, group + g);
        const float mx = *std::max_element(group, group + g);
        const float x = src[r * cols + c], s = q.scale(r, c), bb = q.bias(r, c);
        // Unclamped codes: |x - (q s + bb)| ≤ s/2. Clamped at 0 (x < bb): error ≤ bb - mn, the
        // bf16 rounding of the bias. Clamped at the top: error ≤ overshoot = mx - (bb + qmax s),
        // which is positive when bf16 rounded s down or the bias down; it is bounded by
        // qmax · |s - (mx-mn)/qmax| + |bb - mn| ≤ 2^-8 (mx - mn) + |bb - mn|. For 8 bits that is
        // up to ≈ s (255/256 of a step), so "s/2 + bias rounding" alone does not hold there.
        // tiny: float rounding of (x - bb) / s and of the test's own subtraction.
        const float overshoot = std::max(0.0f, mx - (bb + qmax * s));
        const float tiny = 1e-6f * (std::fabs(x) + std::fabs(mn) + std::fabs(mx)) + 1e-30f;
        ASSERT_LE(overshoot, 0x1p-8f * (mx - mn) + std::fabs(bb - mn) + tiny);
        ASSERT_LE(std::fabs(x - deq[r * cols + c]), s / 2 + std::fabs(bb - mn) + overshoot + tiny)
            << format_name(fmt) << " " << r << "," << c;
        if (fmt.bits == 4) {  // 15 · 2^-8 s < s/2: the top clamp stays within half a step
          ASSERT_LE(std::fabs(x - deq[r * cols + c]), s / 2 + std::fabs(bb - mn) + tiny)
              << format_name(fmt) << " " << r << "," << c;
        }
      }
    }
  }
}

TEST(Quantize, Q8_0HandExample) {
  // amax = 127 -> d = 1 exactly (f16 0x3c00): codes are the values rounded half to even.
  std::vector<float> src(32, 0.25f);
  const float vals[] = {127.0f, -127.0f, 2.5f, 3.5f, -2.5f, -0.5f, 0.5f, 1.5f, 100.4f, -64.6f};
  const int codes[] = {127, -127, 2, 4, -2, 0, 0, 2, 100, -65};
  for (size_t i = 0; i < std::size(vals); ++i) src[i] = vals[i];
  Quantized q(QuantFormat::q8_0(), src, 1, 32);
  EXPECT_EQ(q.scale_bits(0, 0), 0x3c00);
  for (size_t i = 0; i < std::size(vals); ++i) EXPECT_EQ(q.code(0, i), codes[i]) << i;
  for (size_t i = std::size(vals); i < 32; ++i) EXPECT_EQ(q.code(0, i), 0) << i;  // 0.25 -> 0
  // Raw bytes: two's complement int8.
  EXPECT_EQ(q.view.data[0], 0x7f);
  EXPECT_EQ(q.view.data[1], 0x81);
}

TEST(Quantize, Affine4HandExampleAndPacking) {
  // One group of 32: x_j = (j % 16) / 4 - 1 -> mn = -1, mx = 2.75, s = 3.75 / 15 = 0.25, bb = -1,
  // codes j % 16 exactly; then overwrite four elements to probe round-half-to-even:
  // (x - bb) / s = 2.5 -> 2, 3.5 -> 4, 6.5 -> 6, 12.5 -> 12.
  std::vector<float> src(32);
  for (size_t j = 0; j < 32; ++j) src[j] = static_cast<float>(j % 16) / 4.0f - 1.0f;
  src[17] = -1.0f + 2.5f * 0.25f;
  src[18] = -1.0f + 3.5f * 0.25f;
  src[19] = -1.0f + 6.5f * 0.25f;
  src[20] = -1.0f + 12.5f * 0.25f;
  Quantized q(QuantFormat::affine(4, 32), src, 1, 32);
  EXPECT_EQ(bf16_to_f32(q.scale_bits(0, 0)), 0.25f);
  EXPECT_EQ(bf16_to_f32(q.bias_bits(0, 0)), -1.0f);
  // Element j of a word sits at bits [4j, 4j+4): words are 0x76543210, 0xfedcba98, then the
  // second 16 with elements 17..20 = 2, 4, 6, 12.
  EXPECT_EQ(rd32(q.view.data + 0), 0x76543210u);
  EXPECT_EQ(rd32(q.view.data + 4), 0xfedcba98u);
  EXPECT_EQ(rd32(q.view.data + 8), 0x765c6420u);
  EXPECT_EQ(rd32(q.view.data + 12), 0xfedcba98u);
  EXPECT_EQ(q.view.data[0], 0x10);  // little-endian: element 0 in the low nibble of byte 0
}

TEST(Quantize, Affine8HandExample) {
  // mn = 0, mx = 255 -> s = 1, bb = 0: codes are the values; element j of a word is byte j.
  std::vector<float> src(32);
  for (size_t j = 0; j < 32; ++j) src[j] = static_cast<float>(j * 8);
  src[31] = 255.0f;
  src[5] = 40.5f;  // -> 40 (half to even)
  src[6] = 49.5f;  // -> 50
  Quantized q(QuantFormat::affine(8, 32), src, 1, 32);
  EXPECT_EQ(bf16_to_f32(q.scale_bits(0, 0)), 1.0f);
  EXPECT_EQ(bf16_to_f32(q.bias_bits(0, 0)), 0.0f);
  for (size_t j = 0; j < 32; ++j) {
    const int want = j == 5 ? 40 : j == 6 ? 50 : j == 31 ? 255 : static_cast<int>(j * 8);
    EXPECT_EQ(q.view.data[j], want) << j;
  }
}

TEST(Quantize, ConstantGroupsHaveZeroScale) {
  // Affine: mx == mn -> s = 0, all codes 0, value = bb = bf16(mn) for every element.
  for (QuantFormat fmt : kAffineFormats) {
    const size_t g = static_cast<size_t>(fmt.group);
    std::vector<float> src(2 * g, 3.7f);
    for (size_t j = g; j < 2 * g; ++j) src[j] = -0.1234f;  // second group constant, negative
    Quantized q(fmt, src, 1, 2 * g);
    const std::vector<float> deq = q.dequantized();
    for (size_t c = 0; c < 2 * g; ++c) {
      EXPECT_EQ(q.code(0, c), 0);
      EXPECT_EQ(q.scale_bits(0, c), 0);
      EXPECT_EQ(q.bias_bits(0, c), f32_to_bf16(src[c]));
      EXPECT_EQ(deq[c], bf16_to_f32(f32_to_bf16(src[c])));
    }
  }
  // Q8_0: an all-zero group has d = 0 and codes 0; a constant group is ±127 · d.
  std::vector<float> src(64, 0.0f);
  std::fill(src.begin() + 32, src.end(), -0.5f);
  Quantized q(QuantFormat::q8_0(), src, 1, 64);
  const std::vector<float> deq = q.dequantized();
  for (size_t c = 0; c < 32; ++c) {
    EXPECT_EQ(q.code(0, c), 0);
    EXPECT_EQ(q.scale_bits(0, c), 0);
    EXPECT_EQ(deq[c], 0.0f);
  }
  for (size_t c = 32; c < 64; ++c) {
    EXPECT_EQ(q.code(0, c), -127);
    EXPECT_NEAR(deq[c], -0.5f, q.scale(0, c) / 2);
  }
}

TEST(Quantize, AllNegativeGroups) {
  std::mt19937 rng(16);
  std::uniform_real_distribution<float> neg(-5.0f, -1.0f);
  for (QuantFormat fmt : kAffineFormats) {
    const size_t g = static_cast<size_t>(fmt.group), cols = 4 * g;
    std::vector<float> src(cols);
    for (auto& v : src) v = neg(rng);
    Quantized q(fmt, src, 1, cols);
    const std::vector<float> deq = q.dequantized();
    for (size_t c = 0; c < cols; ++c) {
      const float* group = src.data() + c / g * g;
      const float mn = *std::min_element(group, group + g);
      EXPECT_GT(q.scale(0, c), 0.0f);
      EXPECT_LT(q.bias(0, c), -0.99f);  // bias is the (rounded) group minimum
      EXPECT_LE(std::fabs(src[c] - deq[c]),
                q.scale(0, c) / 2 + std::fabs(q.bias(0, c) - mn) + 1e-6f * std::fabs(src[c]))
          << format_name(fmt) << " c=" << c;
    }
  }
}

TEST(Quantize, QuantizedRecordWorksWithMatvec) {
  // End to end: y = W x on a quantized record equals the product with its dequantized rows.
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  ThreadPool pool(2);
  for (QuantFormat fmt : {QuantFormat::q4(), QuantFormat::q8_0(), QuantFormat::bf16()}) {
    const size_t rows = 21, cols = 256;
    const std::vector<float> src = random_matrix(rows, cols, rng);
    Quantized q(fmt, src, rows, cols);
    const std::vector<float> deq = q.dequantized();
    std::vector<float> x(cols), y(rows, std::nanf(""));
    for (auto& v : x) v = unit(rng);
    matvec(q.view, x.data(), y.data(), pool);
    for (size_t r = 0; r < rows; ++r) {
      const float* row = src.data() + r * cols;
      double row_max = 0.0;
      for (size_t c = 0; c < cols; ++c) row_max = std::max(row_max, double{std::fabs(row[c])});
      double acc = 0.0, mag = 0.0;
      for (size_t c = 0; c < cols; ++c) {
        acc += static_cast<double>(deq[r * cols + c]) * x[c];
        mag += (std::fabs(deq[r * cols + c]) + 2 * row_max) * std::fabs(x[c]);
      }
      // Bound as in matvec_test.cpp: (cols/8 + 256) · 2^-24 · Σ(|w| + 2|b|)|x|; an Affine bias
      // is a group minimum rounded to bf16, so |b| ≤ 1.01 · max|x| (row_max, doubled for margin).
      EXPECT_NEAR(y[r], acc, (cols / 8.0 + 256) * 0x1p-24 * 2 * mag + 1e-30) << format_name(fmt);
    }
  }
}

}  // namespace
}  // namespace moeflux::cpu
