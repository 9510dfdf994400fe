// Internal to the CPU matvec: the per-instruction-set kernels behind matvec.hpp's dispatch.
// Callers (matvec.cpp) have already checked the preconditions listed in matvec.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/quant_format.hpp"

namespace moeflux::cpu::detail {

// Unaligned little-endian 16-bit load (scale / bias / f16 / bf16 elements).
inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Per-call preparation of x for the Affine kernels (perm_block and group divide n):
//   xsum[g] = Σ_{c in group g} x[c]   (float32, sequential), so that the bias term of a row is
//             Σ_g b_g · xsum[g] (Σ_c (q_c s + b) x_c = Σ_g s_g Σ_{c∈g} q_c x_c + b_g xsum[g]);
//   xp      = x reordered within each perm_block-element block as [x0, x2, …, x_{B-2},
//             x1, x3, …, x_{B-1}] when perm_block > 0 (4-bit codes: a byte holds elements 2k
//             (low nibble) and 2k+1 (high nibble), so the kernels widen B/2 bytes and use the
//             low nibbles against the first half of xp and the high nibbles against the second).
struct AffineX {
  std::vector<float> xp, xsum;
};
void prepare_affine_x(const float* x, size_t n, size_t group, size_t perm_block, AffineX& out);
// The same into caller memory: xsum[n / group], and xp[n] when perm_block > 0.
void prepare_affine_rows(const float* x, size_t n, size_t group, size_t perm_block, float* xp,
                         float* xsum);

// Row kernels: y[r] = Σ_c W[r,c] · x[c] for r in [row_begin, row_end), float32 fma accumulation.
// Defined only on x86-64; called only when cpu_isa() reaches their level.
void matvec_rows_avx2(const MatrixView& W, const float* x, float* y, size_t row_begin,
                      size_t row_end);
void matvec_rows_avx512(const MatrixView& W, const float* x, float* y, size_t row_begin,
                        size_t row_end);

// The Affine rows of the above with x prepared by the caller (prepare_affine_x with
// affine_perm_block): xk = the permuted x for 4-bit codes (x itself for 8-bit), xsum per group.
void matvec_rows_affine_avx2(const MatrixView& W, const float* xk, const float* xsum, float* y,
                             size_t row_begin, size_t row_end);
void matvec_rows_affine_avx512(const MatrixView& W, const float* xk, const float* xsum, float* y,
                               size_t row_begin, size_t row_end);
// Y[t * ldy + r] for nt <= 4 tokens at once (xk[t], xsum[t] prepared as above): each weight
// unpacked once for all of them; a token's result does not depend on nt.
void matmul_affine_avx2(const MatrixView& W, const float* const* xk, const float* const* xsum,
                        size_t nt, float* Y, size_t ldy, size_t row_begin, size_t row_end);
void matmul_affine_avx512(const MatrixView& W, const float* const* xk, const float* const* xsum,
                          size_t nt, float* Y, size_t ldy, size_t row_begin, size_t row_end);

// The permutation block those kernels expect for `bits`-bit codes (0: none).
inline size_t affine_perm_block(int isa_level, int bits) {
  return bits != 4 ? 0 : isa_level >= 2 ? 32 : 16;
}

// A register tile of matmul on decoded float rows:
//   out[t * ldo + i] (+)= Σ_{c<n} w[i * ldw + c] · x[t * ldx + c]   for i < nrows ≤ 4, t < ntok ≤ 2
// (adding to out when `accumulate`, else overwriting it).
// The kernels hold all 4 × 2 accumulators at once, so each load of w serves two tokens and each
// load of x four rows.
struct Tile {
  const float* w;
  size_t ldw, nrows;
  const float* x;
  size_t ldx, ntok;
  size_t n;
  float* out;
  size_t ldo;
  bool accumulate;
};
constexpr size_t kTileRows = 4, kTileTokens = 2;
void dot_tile_scalar(const Tile& tile);  // float64 accumulation
void dot_tile_avx2(const Tile& tile);
// The same with up to 4 tokens (16 accumulators: each load of w serves four tokens).
constexpr size_t kTileTokens4 = 4;
void dot_tile4_avx512(const Tile& tile);

// Rows [r0, r0 + nr) of a Q8_0 or Affine matrix decoded to float (q·d, q·s + b), row i at
// out + i * ld, in the element order of the matvec kernels' prepared x: 4-bit Affine permuted
// in blocks of affine_perm_block, the others natural. SIMD twins of decode_row.
void decode_rows_avx2(const MatrixView& W, size_t r0, size_t nr, float* out, size_t ld);
void decode_rows_avx512(const MatrixView& W, size_t r0, size_t nr, float* out, size_t ld);

}  // namespace moeflux::cpu::detail
