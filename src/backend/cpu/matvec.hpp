// CPU kernels for stored weight matrices (every QuantFormat): y = W x, Y = X W^T, row decode.
//
// Notation: W[rows, cols] is a MatrixView (layout in core/quant_format.hpp); W[r,c] is the
// real value of element (r, c) as the format defines it:
//   F32/F16/BF16: the stored value;  Q8_0: q * d  (d = f16 scale of the 32-group);
//   Affine:       q * s + b          (s, b = bf16 scale and bias of the group).
//
// Accuracy: the SIMD paths accumulate in float32 with fma, in an order of their choosing (lanes,
// per-group partial sums; Affine uses  Σ_c (q_c s + b) x_c = Σ_g [ s_g Σ_{c∈g} q_c x_c +
// b_g Σ_{c∈g} x_c ] ), so they agree with the float64 reference matvec_scalar_rows to within
// (accumulation depth) · 2^-24 · Σ_c (|W[r,c]| + 2|b_g(c)|) |x_c|.
//
// Instruction set: chosen once per process (the best of avx512 > avx2 > scalar that the CPU and
// OS support); the environment variable MOEFLUX_ISA=scalar|avx2|avx512 forces a lower level.
//
// Common preconditions (MF_ASSERT, on in release builds): format_accepts_cols(W.fmt, W.cols);
// W.data non-null, W.scales non-null for Q8_0/Affine, W.biases non-null for Affine; row ranges
// within [0, W.rows]; x / X / y / Y non-null and not aliasing W.
#pragma once

#include <cstddef>
#include <vector>

#include "core/quant_format.hpp"
#include "core/thread_pool.hpp"



namespace moeflux::cpu {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// y[r] = Σ_c W[r,c] · x[c]  for r in [row_begin, row_end); x has W.cols floats, y has W.rows
// (only y[row_begin, row_end) is written). Single thread, dispatched instruction set.
void matvec_rows(const MatrixView& W, const float* x, float* y, size_t row_begin, size_t row_end);

// y[r] = Σ_c W[r,c] · x[c]  for all r, rows split across `pool` in blocks of 16 rows.
void matvec(const MatrixView& W, const float* x, float* y, ThreadPool& pool);

// Reference: each row decoded to float (dequantize_row), then y[r] = float(Σ_c double(W[r,c]) ·
// double(x[c])). Slow; what the SIMD paths are tested against, and the "scalar" path.
void matvec_scalar_rows(const MatrixView& W, const float* x, float* y, size_t row_begin,
                        size_t row_end);

// out[c] = W[r,c] as float, c in [0, W.cols). Exact for F32/F16/BF16 and Q8_0 (q·d has ≤ 18
// significant bits); Affine is float(q)·s (exact, ≤ 16 bits) + b, rounded once to float.
// Precondition: r < W.rows. Used for embedding rows.
void dequantize_row(const MatrixView& W, size_t r, float* out);

// Y[t, r] = Σ_c W[r,c] · X[t, c]  for t < n_tokens, r < W.rows. X row-major [n_tokens, W.cols],
// Y row-major [n_tokens, W.rows]. Row blocks are split across `pool`; from 16 tokens up each block
// of 16 rows is decoded once to float and dotted with every token in 4-row x 2-token register
// tiles, below that the matvec kernel runs per token on cache-resident row blocks. Accuracy as
// matvec (float32 accumulation).
void matmul(const MatrixView& W, const float* X, size_t n_tokens, float* Y, ThreadPool& pool);

// Y[t, r] = Σ_c W[r,c] · X[t, c]  for t < n_tokens, r in [row_begin, row_end), single thread:
// X rows `ldx` floats apart, Y rows `ldy` apart (only columns [row_begin, row_end) written).
// The building block of every parallel matrix product (same paths and accuracy as matmul).
void matmul_rows(const MatrixView& W, const float* X, size_t ldx, size_t n_tokens, float* Y,
                 size_t ldy, size_t row_begin, size_t row_end);
// Rows per parallel task for a product of `cols`-wide rows over n_tokens tokens: a multiple of
// 16 large enough (~32K multiply-adds) that handing the task to another thread pays.
size_t matmul_task_rows(size_t cols, size_t n_tokens);

// X prepared once for products with weights of one format (prepare_begin, then prepare_rows
// over all rows, possibly from several threads on disjoint ranges), shared read-only by the
// threads of a product; the buffers keep their capacity across uses. What is prepared depends
// on the format and instruction set:
//   - Affine: per token the permuted x and the per-group sums the kernels use (computed once
//     instead of once per block of rows);
//   - otherwise nothing: X is used as it is.
struct PreparedX {
  Isa isa = Isa::Scalar;
  bool affine = false;
  const float* X = nullptr;
  size_t ldx = 0, tokens = 0, n = 0;
  size_t group = 0, perm = 0;
  std::vector<float> xp, xsum;  // affine: [tokens, n] (if perm), [tokens, n / group]
};
void prepare_begin(QuantFormat fmt, const float* X, size_t ldx, size_t tokens, size_t n,
                   PreparedX& out);
void prepare_rows(PreparedX& out, size_t t_begin, size_t t_end);
// matmul_rows on prepared input: Y[t * ldy + r] = Σ_c W[r,c] · x_t[c], r in [row_begin, row_end).
void matmul_rows_prepared(const MatrixView& W, const PreparedX& x, float* Y, size_t ldy,
                          size_t row_begin, size_t row_end);

// The instruction set dispatch picked: "avx512", "avx2" or "scalar".
const char* matvec_isa();

// --- per-path entry points, for tests and benchmarks --------------------------------------

// The best level this CPU and OS support, ignoring MOEFLUX_ISA.
Isa cpu_isa();
// The level dispatch uses (cpu_isa() lowered by MOEFLUX_ISA); read once per process.
Isa active_isa();
const char* isa_name(Isa isa);

// matvec_rows / matmul on the given path. Precondition: isa <= cpu_isa().
void matvec_rows_isa(Isa isa, const MatrixView& W, const float* x, float* y, size_t row_begin,
                     size_t row_end);
void matmul_isa(Isa isa, const MatrixView& W, const float* X, size_t n_tokens, float* Y,
                ThreadPool& pool);
void matmul_rows_isa(Isa isa, const MatrixView& W, const float* X, size_t ldx, size_t n_tokens,
                     float* Y, size_t ldy, size_t row_begin, size_t row_end);

}  // namespace moeflux::cpu
