// AVX2 + FMA + F16C row kernels: y[r] = Σ_c W[r,c] · x[c], float32 fma accumulation, 8 lanes.
// Compiled with per-function target attributes (no global -march); called only when
// cpu_isa() >= Isa::Avx2.
#if defined(__x86_64__)

#include <immintrin.h>

#include <algorithm>

#include "backend/cpu/matvec_kernels.hpp"
#include "core/dtype.hpp"

#define MF_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace moeflux::cpu::detail {
namespace {

MF_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 bytes -> 8 int32 lanes (unsigned / signed widening).
MF_AVX2 inline __m256i widen_u8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
MF_AVX2 inline __m256 load_i8_f32(const uint8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Element loaders of the plain formats: v8(p) = elements p[0..8) as floats, s1(p) = p[0].
struct F32Elems {
  static constexpr size_t kBytes = 4;
  MF_AVX2 static __m256 v8(const uint8_t* p) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
  static float s1(const uint8_t* p) {
    float f;
    std::memcpy(&f, p, sizeof f);
    return f;
  }
};
struct F16Elems {
  static constexpr size_t kBytes = 2;
  MF_AVX2 static __m256 v8(const uint8_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float s1(const uint8_t* p) { return f16_to_f32(load_u16(p)); }
};
struct BF16Elems {  // bf16 -> f32: the 16 bits become the top half of the float
  static constexpr size_t kBytes = 2;
  MF_AVX2 static __m256 v8(const uint8_t* p) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
  static float s1(const uint8_t* p) { return bf16_to_f32(load_u16(p)); }
};

// Σ_{c<n} w[c] x[c] for a plain-format row w (any n: 32-wide body, 8-wide, scalar tail).
template <class E>
MF_AVX2 float dot_plain(const uint8_t* w, const float* x, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t c = 0;
  for (; c + 32 <= n; c += 32) {
    a0 = _mm256_fmadd_ps(E::v8(w + c * E::kBytes), _mm256_loadu_ps(x + c), a0);
    a1 = _mm256_fmadd_ps(E::v8(w + (c + 8) * E::kBytes), _mm256_loadu_ps(x + c + 8), a1);
    a2 = _mm256_fmadd_ps(E::v8(w + (c + 16) * E::kBytes), _mm256_loadu_ps(x + c + 16), a2);
    a3 = _mm256_fmadd_ps(E::v8(w + (c + 24) * E::kBytes), _mm256_loadu_ps(x + c + 24), a3);
  }
  for (; c + 8 <= n; c += 8) {
    a0 = _mm256_fmadd_ps(E::v8(w + c * E::kBytes), _mm256_loadu_ps(x + c), a0);
  }
  float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; c < n; ++c) s += E::s1(w + c * E::kBytes) * x[c];
  return s;
}

// Q8_0 row: Σ_g d_g · Σ_{j<32} q[32g+j] x[32g+j]  (n % 32 == 0).
MF_AVX2 float dot_q8_0(const uint8_t* q, const uint8_t* sc, const float* x, size_t n) {
  __m256 acc = _mm256_setzero_ps();
  for (size_t g = 0; g < n / 32; ++g) {
    const uint8_t* qg = q + 32 * g;
    const float* xg = x + 32 * g;
    __m256 p0 = _mm256_mul_ps(load_i8_f32(qg), _mm256_loadu_ps(xg));
    __m256 p1 = _mm256_mul_ps(load_i8_f32(qg + 8), _mm256_loadu_ps(xg + 8));
    p0 = _mm256_fmadd_ps(load_i8_f32(qg + 16), _mm256_loadu_ps(xg + 16), p0);
    p1 = _mm256_fmadd_ps(load_i8_f32(qg + 24), _mm256_loadu_ps(xg + 24), p1);
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(sc + 2 * g)));
    acc = _mm256_fmadd_ps(d, _mm256_add_ps(p0, p1), acc);
  }
  return hsum(acc);
}

// Affine rows for NT <= 4 tokens at once, group G: for each token t
//   out[t] = Σ_g [ s_g Σ_{c∈g} q_c x_t[c] + b_g xsum_t[g] ]  (n % G == 0),
// each weight unpacked once for all NT tokens; per token the operations (and so the result) are
// the same whatever NT. 4-bit: xk[t] is x_t permuted in 16-blocks (prepare_affine_x, perm_block
// 16): 8 bytes hold 16 codes; their low nibbles (elements 0,2,..,14) meet xk[0..8), the high
// nibbles (1,3,..,15) xk[8..16). 8-bit: one byte per code, x in natural order.
template <size_t G, int BITS, size_t NT>
MF_AVX2 void dot_affine(const uint8_t* q, const uint8_t* sc, const uint8_t* bi,
                        const float* const* xk, const float* const* xsum, size_t n, float* out,
                        size_t ldo) {
  static_assert(G % 16 == 0);
  const __m256i lo4 = _mm256_set1_epi32(0xf);
  __m256 acc[NT];
  float bias_acc[NT];
  for (size_t t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    bias_acc[t] = 0.0f;
  }
  for (size_t g = 0; g < n / G; ++g) {
    __m256 p0[NT], p1[NT];
    for (size_t t = 0; t < NT; ++t) p0[t] = p1[t] = _mm256_setzero_ps();
    for (size_t k = 0; k < G / 16; ++k) {
      __m256 w0, w1;
      if constexpr (BITS == 4) {
        const __m256i b = widen_u8(q + g * (G / 2) + 8 * k);
        w0 = _mm256_cvtepi32_ps(_mm256_and_si256(b, lo4));
        w1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
      } else {
        w0 = _mm256_cvtepi32_ps(widen_u8(q + g * G + 16 * k));
        w1 = _mm256_cvtepi32_ps(widen_u8(q + g * G + 16 * k + 8));
      }
      for (size_t t = 0; t < NT; ++t) {
        const float* xg = xk[t] + g * G + 16 * k;
        p0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xg), p0[t]);
        p1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xg + 8), p1[t]);
      }
    }
    const __m256 s = _mm256_set1_ps(bf16_to_f32(load_u16(sc + 2 * g)));
    const float b = bf16_to_f32(load_u16(bi + 2 * g));
    for (size_t t = 0; t < NT; ++t) {
      acc[t] = _mm256_fmadd_ps(s, _mm256_add_ps(p0[t], p1[t]), acc[t]);
      bias_acc[t] += b * xsum[t][g];
    }
  }
  for (size_t t = 0; t < NT; ++t) out[t * ldo] = hsum(acc[t]) + bias_acc[t];
}

using AffineRows = void (*)(const uint8_t*, const uint8_t*, const uint8_t*, const float* const*,
                            const float* const*, size_t, float*, size_t);

template <size_t G, int BITS>
AffineRows pick_nt(size_t nt) {
  switch (nt) {
    case 1:
      return dot_affine<G, BITS, 1>;
    case 2:
      return dot_affine<G, BITS, 2>;
    case 3:
      return dot_affine<G, BITS, 3>;
    default:
      return dot_affine<G, BITS, 4>;
  }
}

AffineRows pick_affine(int bits, int group, size_t nt) {
  switch (group) {
    case 32:
      return bits == 4 ? pick_nt<32, 4>(nt) : pick_nt<32, 8>(nt);
    case 64:
      return bits == 4 ? pick_nt<64, 4>(nt) : pick_nt<64, 8>(nt);
    default:
      return bits == 4 ? pick_nt<128, 4>(nt) : pick_nt<128, 8>(nt);
  }
}

template <class E>
MF_AVX2 void rows_plain(const MatrixView& W, const float* x, float* y, size_t r0, size_t r1) {
  const size_t stride = row_data_bytes(W.fmt, W.cols);
  for (size_t r = r0; r < r1; ++r) y[r] = dot_plain<E>(W.data + r * stride, x, W.cols);
}

}  // namespace

void matvec_rows_avx2(const MatrixView& W, const float* x, float* y, size_t row_begin,
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
      prepare_affine_x(x, n, static_cast<size_t>(W.fmt.group), four ? 16 : 0, prepared);
      matvec_rows_affine_avx2(W, four ? prepared.xp.data() : x, prepared.xsum.data(), y,
                               row_begin, row_end);
      return;
    }
  }
}

void matvec_rows_affine_avx2(const MatrixView& W, const float* xk, const float* xsum, float* y,
                             size_t row_begin, size_t row_end) {
  matmul_affine_avx2(W, &xk, &xsum, 1, y, 0, row_begin, row_end);
}

void matmul_affine_avx2(const MatrixView& W, const float* const* xk, const float* const* xsum,
                        size_t nt, float* Y, size_t ldy, size_t row_begin, size_t row_end) {
  const size_t n = W.cols;
  const AffineRows rows = pick_affine(W.fmt.bits, W.fmt.group, nt);
  const size_t ds = row_data_bytes(W.fmt, n), ss = row_scale_bytes(W.fmt, n);
  for (size_t r = row_begin; r < row_end; ++r)
    rows(W.data + r * ds, W.scales + r * ss, W.biases + r * ss, xk, xsum, n, Y + r, ldy);
}

// Tile kernel (8 lanes): rows past nrows / tokens past ntok alias the last valid one and
// their sums are dropped, so the loop body is always the full 4 x 2 tile.
MF_AVX2 void dot_tile_avx2(const Tile& tile) {
  const float* w[kTileRows];
  const float* x[kTileTokens];
  for (size_t i = 0; i < kTileRows; ++i) w[i] = tile.w + std::min(i, tile.nrows - 1) * tile.ldw;
  for (size_t t = 0; t < kTileTokens; ++t) x[t] = tile.x + std::min(t, tile.ntok - 1) * tile.ldx;
  __m256 acc[kTileRows][kTileTokens];
  for (auto& row : acc) row[0] = row[1] = _mm256_setzero_ps();
  size_t c = 0;
  for (; c + 8 <= tile.n; c += 8) {
    const __m256 x0 = _mm256_loadu_ps(x[0] + c), x1 = _mm256_loadu_ps(x[1] + c);
    for (size_t i = 0; i < kTileRows; ++i) {
      const __m256 wv = _mm256_loadu_ps(w[i] + c);
      acc[i][0] = _mm256_fmadd_ps(wv, x0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(wv, x1, acc[i][1]);
    }
  }
  for (size_t t = 0; t < tile.ntok; ++t) {
    for (size_t i = 0; i < tile.nrows; ++i) {
      float s = hsum(acc[i][t]);
      for (size_t k = c; k < tile.n; ++k) s += w[i][k] * x[t][k];
      float& o = tile.out[t * tile.ldo + i];
      o = tile.accumulate ? o + s : s;
    }
  }
}

MF_AVX2 void decode_rows_avx2(const MatrixView& W, size_t r0, size_t nr, float* out, size_t ld) {
  const size_t n = W.cols;
  const size_t ds = row_data_bytes(W.fmt, n), ss = row_scale_bytes(W.fmt, n);
  for (size_t i = 0; i < nr; ++i) {
    const uint8_t* q = W.data + (r0 + i) * ds;
    const uint8_t* sc = W.scales + (r0 + i) * ss;
    float* o = out + i * ld;
    if (W.fmt.kind == QuantKind::Q8_0) {
      for (size_t g = 0; g < n / 32; ++g) {
        const __m256 d = _mm256_set1_ps(f16_to_f32(load_u16(sc + 2 * g)));
        for (size_t k = 0; k < 32; k += 8)
          _mm256_storeu_ps(o + 32 * g + k, _mm256_mul_ps(load_i8_f32(q + 32 * g + k), d));
      }
      continue;
    }
    const uint8_t* bi = W.biases + (r0 + i) * ss;
    const size_t G = static_cast<size_t>(W.fmt.group);
    const __m256i lo4 = _mm256_set1_epi32(0xf);
    for (size_t g = 0; g < n / G; ++g) {
      const __m256 s = _mm256_set1_ps(bf16_to_f32(load_u16(sc + 2 * g)));
      const __m256 b = _mm256_set1_ps(bf16_to_f32(load_u16(bi + 2 * g)));
      for (size_t c = g * G; c < (g + 1) * G; c += 16) {
        if (W.fmt.bits == 4) {  // 16-block: low nibbles (evens) then high nibbles (odds)
          const __m256i v = widen_u8(q + c / 2);
          _mm256_storeu_ps(o + c, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, lo4)), s, b));
          _mm256_storeu_ps(o + c + 8,
                           _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), s, b));
        } else {
          _mm256_storeu_ps(o + c, _mm256_fmadd_ps(_mm256_cvtepi32_ps(widen_u8(q + c)), s, b));
          _mm256_storeu_ps(o + c + 8,
                           _mm256_fmadd_ps(_mm256_cvtepi32_ps(widen_u8(q + c + 8)), s, b));
        }
      }
    }
  }
}

}  // namespace moeflux::cpu::detail

#endif  // __x86_64__
