// AVX-512 (F, BW, VL) + FMA + F16C row kernels: y[r] = Σ_c W[r,c] · x[c], float32 fma
// accumulation, 16 lanes. Per-function target attributes (no global -march); called only when
// cpu_isa() == Isa::Avx512. Same structure as matvec_avx2.cpp, twice as wide.
#if defined(__x86_64__)

// GCC 12's AVX-512 intrinsics self-initialise an "undefined" vector (__Y = __Y), which
// -Wuninitialized flags when they are enabled by a target attribute rather than -mavx512f.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/cpu/matvec_kernels.hpp"
#include "core/dtype.hpp"

#define MF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

namespace moeflux::cpu::detail {
namespace {

MF_AVX512 inline __m128i load128(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
// 16 bytes -> 16 int32 lanes (unsigned widening), and signed bytes -> floats.
MF_AVX512 inline __m512i widen_u8(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(load128(p));
}
// The bf16 values p[0..16) as floats, lanes outside m zero (and not read).
MF_AVX512 inline __m512 bf16x16_to_f32(const uint8_t* p, __mmask16 m) {
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}
MF_AVX512 inline __m512 load_i8_f32(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load128(p)));
}

// Element loaders of the plain formats: v16(p) = elements p[0..16) as floats, s1(p) = p[0].
struct F32Elems {
  static constexpr size_t kBytes = 4;
  MF_AVX512 static __m512 v16(const uint8_t* p) { return _mm512_loadu_ps(p); }
  static float s1(const uint8_t* p) {
    float f;
    std::memcpy(&f, p, sizeof f);
    return f;
  }
};
struct F16Elems {
  static constexpr size_t kBytes = 2;
  MF_AVX512 static __m512 v16(const uint8_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static float s1(const uint8_t* p) { return f16_to_f32(load_u16(p)); }
};
struct BF16Elems {  // bf16 -> f32: the 16 bits become the top half of the float
  static constexpr size_t kBytes = 2;
  MF_AVX512 static __m512 v16(const uint8_t* p) {
    const __m512i h =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
  }
  static float s1(const uint8_t* p) { return bf16_to_f32(load_u16(p)); }
};

// Σ_{c<n} w[c] x[c] for a plain-format row w (any n: 64-wide body, 16-wide, scalar tail).
template <class E>
MF_AVX512 float dot_plain(const uint8_t* w, const float* x, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t c = 0;
  for (; c + 64 <= n; c += 64) {
    a0 = _mm512_fmadd_ps(E::v16(w + c * E::kBytes), _mm512_loadu_ps(x + c), a0);
    a1 = _mm512_fmadd_ps(E::v16(w + (c + 16) * E::kBytes), _mm512_loadu_ps(x + c + 16), a1);
    a2 = _mm512_fmadd_ps(E::v16(w + (c + 32) * E::kBytes), _mm512_loadu_ps(x + c + 32), a2);
    a3 = _mm512_fmadd_ps(E::v16(w + (c + 48) * E::kBytes), _mm512_loadu_ps(x + c + 48), a3);
  }
  for (; c + 16 <= n; c += 16) {
    a0 = _mm512_fmadd_ps(E::v16(w + c * E::kBytes), _mm512_loadu_ps(x + c), a0);
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; c < n; ++c) s += E::s1(w + c * E::kBytes) * x[c];
  return s;
}

// Q8_0 row: Σ_g d_g · Σ_{j<32} q[32g+j] x[32g+j]  (n % 32 == 0).
MF_AVX512 float dot_q8_0(const uint8_t* q, const uint8_t* sc, const float* x, size_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (size_t g = 0; g < n / 32; ++g) {
    const uint8_t* qg = q + 32 * g;
    const float* xg = x + 32 * g;
    const __m512 p = _mm512_fmadd_ps(load_i8_f32(qg + 16), _mm512_loadu_ps(xg + 16),
                                     _mm512_mul_ps(load_i8_f32(qg), _mm512_loadu_ps(xg)));
    acc = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(load_u16(sc + 2 * g))), p, acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// Affine rows for NT <= 4 tokens at once, group G (as matvec_avx2.cpp's dot_affine, 16 lanes):
// 4-bit xk[t] is x_t permuted in 32-blocks (perm_block 32): 16 bytes hold 32 codes; their low
// nibbles (elements 0,2,..,30) meet xk[0..16), the high nibbles (1,3,..,31) xk[16..32).
// LOOKUP (4-bit): codes become floats by lookup — vpermps reads only the low 4 bits of each
// index lane, so the low nibble needs no mask, and a lookup replaces the conversion: 6 vector
// operations per 32 codes instead of 7, float(q) exactly either way (the same bits).
// Measured on the dev machine (Xeon with AVX-512, a Qwen3-30B gate matrix in L2, one thread):
// 8.8 GB/s converted with a scalar scale and bias per group; 10.6 looked up; 11.5 with the
// groups' scales and biases handled 16 at a time (below).
template <size_t G, int BITS, size_t NT, bool LOOKUP = true>
MF_AVX512 void dot_affine(const uint8_t* q, const uint8_t* sc, const uint8_t* bi,
                          const float* const* xk, const float* const* xsum, size_t n, float* out,
                          size_t ldo) {
  static_assert(G % 32 == 0);
  const __m512i lo4 = _mm512_set1_epi32(0xf);
  const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 acc[NT], bias_acc[NT];
  for (size_t t = 0; t < NT; ++t) acc[t] = bias_acc[t] = _mm512_setzero_ps();
  const size_t groups = n / G;
  // Groups in blocks of 16: the block's scales and biases are widened from bf16 at once, a
  // group's scale taken from them by lane, and the bias term Σ_g b_g xsum[g] summed lane-wise
  // (a lane per group of the block) and reduced once at the end.
  for (size_t g0 = 0; g0 < groups; g0 += 16) {
    const size_t ng = std::min<size_t>(16, groups - g0);
    const __mmask16 m = static_cast<__mmask16>((1u << ng) - 1u);
    const __m512 scales = bf16x16_to_f32(sc + 2 * g0, m), biases = bf16x16_to_f32(bi + 2 * g0, m);
    for (size_t t = 0; t < NT; ++t)
      bias_acc[t] = _mm512_fmadd_ps(biases, _mm512_maskz_loadu_ps(m, xsum[t] + g0), bias_acc[t]);
    for (size_t j = 0; j < ng; ++j) {
      const size_t g = g0 + j;
      __m512 p0[NT], p1[NT];
      for (size_t t = 0; t < NT; ++t) p0[t] = p1[t] = _mm512_setzero_ps();
      for (size_t k = 0; k < G / 32; ++k) {
        __m512 w0, w1;
        if constexpr (BITS == 4) {
          const __m512i b = widen_u8(q + g * (G / 2) + 16 * k);
          if constexpr (LOOKUP) {
            w0 = _mm512_permutexvar_ps(b, codes);
            w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), codes);
          } else {
            w0 = _mm512_cvtepi32_ps(_mm512_and_si512(b, lo4));
            w1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
          }
        } else {
          w0 = _mm512_cvtepi32_ps(widen_u8(q + g * G + 32 * k));
          w1 = _mm512_cvtepi32_ps(widen_u8(q + g * G + 32 * k + 16));
        }
        for (size_t t = 0; t < NT; ++t) {
          const float* xg = xk[t] + g * G + 32 * k;
          p0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xg), p0[t]);
          p1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xg + 16), p1[t]);
        }
      }
      const __m512 s = _mm512_permutexvar_ps(_mm512_set1_epi32(static_cast<int>(j)), scales);
      for (size_t t = 0; t < NT; ++t)
        acc[t] = _mm512_fmadd_ps(s, _mm512_add_ps(p0[t], p1[t]), acc[t]);
    }
  }
  for (size_t t = 0; t < NT; ++t)
    out[t * ldo] = _mm512_reduce_add_ps(acc[t]) + _mm512_reduce_add_ps(bias_acc[t]);
}

using AffineRows = void (*)(const uint8_t*, const uint8_t*, const uint8_t*, const float* const*,
                            const float* const*, size_t, float*, size_t);

template <size_t G, int BITS, bool LOOKUP = true>
AffineRows pick_nt(size_t nt) {
  switch (nt) {
    case 1:
      return dot_affine<G, BITS, 1, LOOKUP>;
    case 2:
      return dot_affine<G, BITS, 2, LOOKUP>;
    case 3:
      return dot_affine<G, BITS, 3, LOOKUP>;
    default:
      return dot_affine<G, BITS, 4, LOOKUP>;
  }
}

// MOEFLUX_CPU_A4_LOOKUP=0: 4-bit codes converted, not looked up (to compare; same bits).
bool a4_lookup() {
  static const bool on = [] {
    const char* env = std::getenv("MOEFLUX_CPU_A4_LOOKUP");
    return !(env && std::string(env) == "0");
  }();
  return on;
}

template <size_t G>
AffineRows pick_a4(size_t nt) {
  return a4_lookup() ? pick_nt<G, 4, true>(nt) : pick_nt<G, 4, false>(nt);
}

AffineRows pick_affine(int bits, int group, size_t nt) {
  switch (group) {
    case 32:
      return bits == 4 ? pick_a4<32>(nt) : pick_nt<32, 8>(nt);
    case 64:
      return bits == 4 ? pick_a4<64>(nt) : pick_nt<64, 8>(nt);
    default:
      return bits == 4 ? pick_a4<128>(nt) : pick_nt<128, 8>(nt);
  }
}

template <class E>
MF_AVX512 void rows_plain(const MatrixView& W, const float* x, float* y, size_t r0, size_t r1) {
  const size_t stride = row_data_bytes(W.fmt, W.cols);
  for (size_t r = r0; r < r1; ++r) y[r] = dot_plain<E>(W.data + r * stride, x, W.cols);
}

}  // namespace

void matvec_rows_avx512(const MatrixView& W, const float* x, float* y, size_t row_begin,
                        size_t row_end) {
  const size_t n = W.cols;
  switch (W.fmt.kind) {
    case QuantKind::F32:
      rows_plain<F32Elems>(W, x, y, row_begin, row_end);
      return;
    case QuantKind::F16:
      rows_plain<F16Elems>(W, x, y, row_begin, row_end);
      return;
    case QuantKind::BF16:
      rows_plain<BF16Elems>(W, x, y, row_begin, row_end);
      return;
    case QuantKind::Q8_0: {
      const size_t ds = row_data_bytes(W.fmt, n), ss = row_scale_bytes(W.fmt, n);
      for (size_t r = row_begin; r < row_end; ++r) {
        y[r] = dot_q8_0(W.data + r * ds, W.scales + r * ss, x, n);
      }
      return;
    }
    case QuantKind::Affine: {
      thread_local AffineX prepared;
      const bool four = W.fmt.bits == 4;
      prepare_affine_x(x, n, static_cast<size_t>(W.fmt.group), four ? 32 : 0, prepared);
      matvec_rows_affine_avx512(W, four ? prepared.xp.data() : x, prepared.xsum.data(), y,
                                row_begin, row_end);
      return;
    }
  }
}

void matvec_rows_affine_avx512(const MatrixView& W, const float* xk, const float* xsum, float* y,
                               size_t row_begin, size_t row_end) {
  matmul_affine_avx512(W, &xk, &xsum, 1, y, 0, row_begin, row_end);
}

void matmul_affine_avx512(const MatrixView& W, const float* const* xk, const float* const* xsum,
                          size_t nt, float* Y, size_t ldy, size_t row_begin, size_t row_end) {
  const size_t n = W.cols;
  const AffineRows rows = pick_affine(W.fmt.bits, W.fmt.group, nt);
  const size_t ds = row_data_bytes(W.fmt, n), ss = row_scale_bytes(W.fmt, n);
  for (size_t r = row_begin; r < row_end; ++r)
    rows(W.data + r * ds, W.scales + r * ss, W.biases + r * ss, xk, xsum, n, Y + r, ldy);
}

MF_AVX512 void decode_rows_avx512(const MatrixView& W, size_t r0, size_t nr, float* out,
                                  size_t ld) {
  const size_t n = W.cols;
  const size_t ds = row_data_bytes(W.fmt, n), ss = row_scale_bytes(W.fmt, n);
  for (size_t i = 0; i < nr; ++i) {
    const uint8_t* q = W.data + (r0 + i) * ds;
    const uint8_t* sc = W.scales + (r0 + i) * ss;
    float* o = out + i * ld;
    if (W.fmt.kind == QuantKind::Q8_0) {
      for (size_t g = 0; g < n / 32; ++g) {
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(load_u16(sc + 2 * g)));
        _mm512_storeu_ps(o + 32 * g, _mm512_mul_ps(load_i8_f32(q + 32 * g), d));
        _mm512_storeu_ps(o + 32 * g + 16, _mm512_mul_ps(load_i8_f32(q + 32 * g + 16), d));
      }
      continue;
    }
    const uint8_t* bi = W.biases + (r0 + i) * ss;
    const size_t G = static_cast<size_t>(W.fmt.group);
    const __m512i lo4 = _mm512_set1_epi32(0xf);
    for (size_t g = 0; g < n / G; ++g) {
      const __m512 s = _mm512_set1_ps(bf16_to_f32(load_u16(sc + 2 * g)));
      const __m512 b = _mm512_set1_ps(bf16_to_f32(load_u16(bi + 2 * g)));
      for (size_t c = g * G; c < (g + 1) * G; c += 32) {
        if (W.fmt.bits == 4) {  // 32-block: low nibbles (evens) then high nibbles (odds)
          const __m512i v = widen_u8(q + c / 2);
          _mm512_storeu_ps(o + c,
                           _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, lo4)), s, b));
          _mm512_storeu_ps(o + c + 16,
                           _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), s, b));
        } else {
          _mm512_storeu_ps(o + c, _mm512_fmadd_ps(_mm512_cvtepi32_ps(widen_u8(q + c)), s, b));
          _mm512_storeu_ps(o + c + 16,
                           _mm512_fmadd_ps(_mm512_cvtepi32_ps(widen_u8(q + c + 16)), s, b));
        }
      }
    }
  }
}

// 4 rows x 4 tokens; rows past nrows / tokens past ntok alias the last valid one and their
// sums are dropped.
MF_AVX512 void dot_tile4_avx512(const Tile& tile) {
  const float* w[kTileRows];
  const float* x[kTileTokens4];
  for (size_t i = 0; i < kTileRows; ++i) w[i] = tile.w + std::min(i, tile.nrows - 1) * tile.ldw;
  for (size_t t = 0; t < kTileTokens4; ++t) x[t] = tile.x + std::min(t, tile.ntok - 1) * tile.ldx;
  __m512 acc[kTileRows][kTileTokens4];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  size_t c = 0;
  for (; c + 16 <= tile.n; c += 16) {
    __m512 xv[kTileTokens4];
    for (size_t t = 0; t < kTileTokens4; ++t) xv[t] = _mm512_loadu_ps(x[t] + c);
    for (size_t i = 0; i < kTileRows; ++i) {
      const __m512 wv = _mm512_loadu_ps(w[i] + c);
      for (size_t t = 0; t < kTileTokens4; ++t) acc[i][t] = _mm512_fmadd_ps(wv, xv[t], acc[i][t]);
    }
  }
  for (size_t t = 0; t < tile.ntok; ++t) {
    for (size_t i = 0; i < tile.nrows; ++i) {
      float s = _mm512_reduce_add_ps(acc[i][t]);
      for (size_t k = c; k < tile.n; ++k) s += w[i][k] * x[t][k];
      float& o = tile.out[t * tile.ldo + i];
      o = tile.accumulate ? o + s : s;
    }
  }
}

}  // namespace moeflux::cpu::detail

#pragma GCC diagnostic pop

#endif  // __x86_64__
