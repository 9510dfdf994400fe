// Random stored matrices in every weight format, an independent float64 decoder of the stored
// layout (core/quant_format.hpp) and the float32 error bound of a product against it: shared by
// the kernel tests (matvec_test.cpp) and the backend op tests (backend_ops_test.cpp).
//
// Records are filled with random codes straight from the layout description (not through the
// quantizer), so every code value and bit position is exercised.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.hpp"
#include "core/quant_format.hpp"

namespace moeflux::test {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

inline uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// A stored matrix with random contents, owning its record.
struct RandomMatrix {
  std::vector<uint8_t> record;
  MatrixView view;

  RandomMatrix(QuantFormat fmt, size_t rows, size_t cols, std::mt19937& rng) {
    const MatrixLayout l = matrix_layout(fmt, rows, cols);
    record.resize(l.total_bytes);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    uint8_t* data = record.data() + l.data_offset;
    auto put16 = [](uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); };
    const size_t n = rows * cols;
    switch (fmt.kind) {
      case QuantKind::F32:
        for (size_t i = 0; i < n; ++i) {
          const float v = unit(rng);
          std::memcpy(data + 4 * i, &v, 4);
        }
        break;
      case QuantKind::F16:
        for (size_t i = 0; i < n; ++i) put16(data + 2 * i, f32_to_f16(unit(rng)));
        break;
      case QuantKind::BF16:
        for (size_t i = 0; i < n; ++i) put16(data + 2 * i, f32_to_bf16(unit(rng)));
        break;
      case QuantKind::Q8_0: {
        std::uniform_int_distribution<int> code(-128, 127);
        std::uniform_real_distribution<float> scale(0.002f, 0.02f);
        for (size_t i = 0; i < n; ++i) data[i] = static_cast<uint8_t>(code(rng));
        for (size_t i = 0; i < l.scales_bytes / 2; ++i) {
          put16(record.data() + l.scales_offset + 2 * i, f32_to_f16(scale(rng)));
        }
        break;
      }
      case QuantKind::Affine: {
        std::uniform_int_distribution<int> byte(0, 255);
        std::uniform_real_distribution<float> scale(-0.05f, 0.05f), bias(-0.5f, 0.5f);
        for (size_t i = 0; i < l.data_bytes; ++i) data[i] = static_cast<uint8_t>(byte(rng));
        for (size_t i = 0; i < l.scales_bytes / 2; ++i) {
          put16(record.data() + l.scales_offset + 2 * i, f32_to_bf16(scale(rng)));
          put16(record.data() + l.biases_offset + 2 * i, f32_to_bf16(bias(rng)));
        }
        break;
      }
    }
    view = MatrixView::from_record(fmt, rows, cols, record.data());
  }
};

// W[r,c] decoded independently of the library, from the layout in core/quant_format.hpp.
// Also returns |bias| of the element's group (0 unless Affine) for the error bound.
inline double ref_value(const MatrixView& W, size_t r, size_t c, double* abs_bias = nullptr) {
  const size_t i = r * W.cols + c;
  if (abs_bias) *abs_bias = 0.0;
  switch (W.fmt.kind) {
    case QuantKind::F32: {
      float v;
      std::memcpy(&v, W.data + 4 * i, 4);
      return v;
    }
    case QuantKind::F16:
      return f16_to_f32(rd16(W.data + 2 * i));
    case QuantKind::BF16:
      return bf16_to_f32(rd16(W.data + 2 * i));
    case QuantKind::Q8_0:
      return static_cast<int8_t>(W.data[i]) *
             static_cast<double>(f16_to_f32(rd16(W.scales + 2 * (i / 32))));
    case QuantKind::Affine: {
      // Rows are whole words (cols * bits % 32 == 0), so the flat element index locates the word.
      const size_t bits = static_cast<size_t>(W.fmt.bits), per_word = 32 / bits;
      const uint32_t q =
          (rd32(W.data + 4 * (i / per_word)) >> (bits * (i % per_word))) & ((1u << bits) - 1u);
      const size_t g = i / static_cast<size_t>(W.fmt.group);  // groups never straddle rows
      const double s = bf16_to_f32(rd16(W.scales + 2 * g));
      const double b = bf16_to_f32(rd16(W.biases + 2 * g));
      if (abs_bias) *abs_bias = std::fabs(b);
      return q * s + b;
    }
  }
  return 0.0;
}

// Float64 reference y[r] and the error bound of a float32 kernel for it.
//
// Tolerance: a float32 sum of products computed along a chain of `depth` roundings errs by at most
// depth · u · Σ|terms| (u = 2^-24; Higham's γ_n). In our kernels every product passes through at
// most cols/8 vector-lane additions (≥ 8 lanes), plus ≤ 64 for the scalar tail, horizontal sums,
// per-group partial sums and scale fma, plus ≤ 128 for Affine's per-group Σx (group ≤ 128): depth
// ≤ cols/8 + 256. Affine kernels sum s·Σq x + b·Σ x instead of Σ (q s + b) x; since |q s| ≤ |w| +
// |b| its terms are bounded by (|w| + 2|b|)|x|, which is the Σ|terms| used here. A real defect (a
// wrong or missing element) errs by ~|w x| ≈ Σ|terms| / cols, well above this bound for the
// shapes tested (cols ≤ 4096: bound ≤ 7.6e-5 · Σ|terms|, one element ≥ 2.4e-4 · Σ|terms|).
struct Reference {
  std::vector<double> y;
  std::vector<double> tol;
};

inline Reference reference(const MatrixView& W, const float* x) {
  Reference ref{std::vector<double>(W.rows), std::vector<double>(W.rows)};
  const double depth = static_cast<double>(W.cols) / 8 + 256;
  for (size_t r = 0; r < W.rows; ++r) {
    double acc = 0.0, mag = 0.0;
    for (size_t c = 0; c < W.cols; ++c) {
      double abs_b;
      const double w = ref_value(W, r, c, &abs_b);
      acc += w * x[c];
      mag += (std::fabs(w) + 2 * abs_b) * std::fabs(x[c]);
    }
    ref.y[r] = acc;
    ref.tol[r] = depth * 0x1p-24 * mag + 1e-30;
  }
  return ref;
}

inline std::vector<float> random_vector(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& e : v) e = unit(rng);
  return v;
}

}  // namespace moeflux::test
