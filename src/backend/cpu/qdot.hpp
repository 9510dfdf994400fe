// Integer dot products for quantized weights (Q8_0, Affine 4-bit): the input rows are quantized
// to int16 per weight group, and each group's Σ q·xq is an exact int32 sum of 16-bit products
// (vpmaddwd), scaled once per group.
//
// Per token t and weight group g (the weights' group size G):
//   d[t][g]    = max_{c∈g} |x_t[c]| / 32767
//   xq[t][c]   = round(x_t[c] / d[t][g])   (round half to even; 0 when d = 0)
//   xsum[t][g] = Σ_{c∈g} x_t[c]            (float32 of the unquantized x: the affine bias term)
// and for a row r:
//   Q8_0:   y = Σ_g s_g d_g Σ_{c∈g} q_c xq_c
//   Affine: y = Σ_g [ s_g d_g Σ_{c∈g} q_c xq_c + b_g xsum_g ]
// Error against the exact product: |x_c - d_g xq_c| <= d_g / 2, so
//   |y - Σ_c W[r,c] x_c| <= Σ_c |q_c s_g| d_g / 2  (+ float32 rounding of the group sums),
// i.e. a relative error of about 2^-16 of Σ|w||x| — 256 times finer than int8 activations
// (llama.cpp's), so parity with float64 references holds at the float path's bounds.
//
// 4-bit codes pair elements 2k (low nibble) and 2k+1 (high nibble) in byte k; xq is stored
// permuted per block of `perm` elements as [x0, x2, …, x_{perm-2}, x1, x3, …] so that the
// widened low and high nibbles meet contiguous xq (perm 32 for AVX2, 64 for AVX-512).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/quant_format.hpp"

namespace moeflux::cpu {

enum class Isa : int;

struct QuantizedInput {
  Isa isa{};  // the instruction set it was prepared for
  size_t tokens = 0, n = 0, group = 0, perm = 0;
  std::vector<int16_t> xq;     // [tokens, n], permuted for 4-bit codes
  std::vector<float> d, xsum;  // [tokens, n / group]

  const int16_t* q(size_t t) const { return xq.data() + t * n; }
  const float* scale(size_t t) const { return d.data() + t * (n / group); }
  const float* sum(size_t t) const { return xsum.data() + t * (n / group); }

  // Sizes the buffers for `tokens` rows of n (a multiple of 64) for weights of format fmt on
  // `isa` (grows only).
  void reset(QuantFormat fmt, Isa isa, size_t tokens, size_t n);
};

// True when products with weights of `fmt` take the integer path on `isa` (AVX2 or AVX-512;
// Q8_0, and 4-bit Affine with group 32, 64 or 128).
bool uses_quantized_input(QuantFormat fmt, Isa isa);

// Quantizes rows [t_begin, t_end) of X (row t at X + t * ldx, out.n floats) into `out`, which
// reset() sized. Rows are independent: threads may fill disjoint ranges.
void quantize_input_rows(const float* X, size_t ldx, size_t t_begin, size_t t_end,
                         QuantizedInput& out);

// Y[t * ldy + r] = Σ_c W[r,c] · x_t[c]  for r in [row_begin, row_end), t < x.tokens, from the
// prepared rows. Single thread. Precondition: x was reset for W's format and W.cols.
void qmatmul_rows(const MatrixView& W, const QuantizedInput& x, float* Y, size_t ldy,
                  size_t row_begin, size_t row_end);

namespace detail {
// The per-ISA halves (qdot_avx2.cpp, qdot_avx512.cpp).
void quantize_rows_avx2(const float* x, size_t n, size_t group, size_t perm, int16_t* xq,
                        float* d, float* xsum);
void qmatmul_rows_avx2(const MatrixView& W, const QuantizedInput& x, float* Y, size_t ldy,
                       size_t r0, size_t r1);
void quantize_rows_avx512(const float* x, size_t n, size_t group, size_t perm, int16_t* xq,
                          float* d, float* xsum);
void qmatmul_rows_avx512(const MatrixView& W, const QuantizedInput& x, float* Y, size_t ldy,
                         size_t r0, size_t r1);
}  // namespace detail

}  // namespace moeflux::cpu
