// AVX2 integer dot products (qdot.hpp): int16 inputs, vpmaddwd over 16 weights at a time, up to
// four tokens per pass over a row (each weight is loaded and unpacked once for all of them).
#if defined(__x86_64__)

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/matvec_kernels.hpp"
#include "backend/cpu/matvec.hpp"
#include "core/dtype.hpp"

#define MF_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace moeflux::cpu::detail {
namespace {

constexpr size_t kTokens = 4;  // tokens per pass over a row

MF_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
MF_AVX2 inline __m128i load128(const void* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
MF_AVX2 inline __m256i load256(const void* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
// 8 bf16 values -> 8 floats.
MF_AVX2 inline __m256 bf16x8(const uint8_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load128(p)), 16));
}

// Σ_g b_g xsum_g over ng groups (affine bias term).
MF_AVX2 float bias_dot(const uint8_t* b, const float* xsum, size_t ng) {
  __m256 acc = _mm256_setzero_ps();
  size_t g = 0;
  for (; g + 8 <= ng; g += 8) acc = _mm256_fmadd_ps(bf16x8(b + 2 * g), _mm256_loadu_ps(xsum + g), acc);
  float s = hsum(acc);
  for (; g < ng; ++g) s += bf16_to_f32(load_u16(b + 2 * g)) * xsum[g];
  return s;
}

// One row of a 4-bit Affine matrix against nt <= kTokens prepared inputs (perm 32).
template <size_t G>
MF_AVX2 void row_affine4(const uint8_t* q, const uint8_t* sc, const uint8_t* bi,
                         const QuantizedInput& x, size_t t0, size_t nt, float* out, size_t ldy) {
  const size_t n = x.n, ng = n / G;
  const __m256i low4 = _mm256_set1_epi16(0x0f);
  __m256 acc[kTokens];
  const int16_t* xq[kTokens];
  const float* d[kTokens];
  for (size_t t = 0; t < nt; ++t) {
    acc[t] = _mm256_setzero_ps();
    xq[t] = x.q(t0 + t);
    d[t] = x.scale(t0 + t);
  }
  for (size_t g = 0; g < ng; ++g) {
    __m256i gi[kTokens];
    for (size_t t = 0; t < nt; ++t) gi[t] = _mm256_setzero_si256();
    for (size_t b = 0; b < G / 32; ++b) {
      const size_t c = g * G + 32 * b;  // first element of this 32-block
      const __m256i w = _mm256_cvtepu8_epi16(load128(q + c / 2));
      const __m256i lo = _mm256_and_si256(w, low4), hi = _mm256_srli_epi16(w, 4);
      for (size_t t = 0; t < nt; ++t) {
        gi[t] = _mm256_add_epi32(gi[t], _mm256_madd_epi16(lo, load256(xq[t] + c)));
        gi[t] = _mm256_add_epi32(gi[t], _mm256_madd_epi16(hi, load256(xq[t] + c + 16)));
      }
    }
    const float s = bf16_to_f32(load_u16(sc + 2 * g));
    for (size_t t = 0; t < nt; ++t)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(gi[t]), _mm256_set1_ps(s * d[t][g]), acc[t]);
  }
  for (size_t t = 0; t < nt; ++t) out[t * ldy] = hsum(acc[t]) + bias_dot(bi, x.sum(t0 + t), ng);
}

// One row of a Q8_0 matrix against nt <= kTokens prepared inputs.
MF_AVX2 void row_q8_0(const uint8_t* q, const uint8_t* sc, const QuantizedInput& x, size_t t0,
                      size_t nt, float* out, size_t ldy) {
  const size_t ng = x.n / 32;
  __m256 acc[kTokens];
  for (size_t t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
  for (size_t g = 0; g < ng; ++g) {
    const __m256i w0 = _mm256_cvtepi8_epi16(load128(q + 32 * g));
    const __m256i w1 = _mm256_cvtepi8_epi16(load128(q + 32 * g + 16));
    const float s = f16_to_f32(load_u16(sc + 2 * g));
    for (size_t t = 0; t < nt; ++t) {
      const int16_t* xq = x.q(t0 + t) + 32 * g;
      const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(w0, load256(xq)),
                                         _mm256_madd_epi16(w1, load256(xq + 16)));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s * x.scale(t0 + t)[g]),
                               acc[t]);
    }
  }
  for (size_t t = 0; t < nt; ++t) out[t * ldy] = hsum(acc[t]);
}

}  // namespace

MF_AVX2 void quantize_rows_avx2(const float* x, size_t n, size_t group, size_t perm, int16_t* xq,
                                float* d, float* xsum) {
  thread_local std::vector<int16_t> natural;
  int16_t* dst = xq;
  if (perm) {
    if (natural.size() < n) natural.resize(n);
    dst = natural.data();
  }
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    __m256 mx = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
    for (size_t c = 0; c < group; c += 8) {
      const __m256 v = _mm256_loadu_ps(xg + c);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v));
      sum = _mm256_add_ps(sum, v);
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float amax = _mm_cvtss_f32(m);
    d[g] = amax / 32767.0f;
    xsum[g] = hsum(sum);
    const __m256 inv = _mm256_set1_ps(amax > 0 ? 32767.0f / amax : 0.0f);
    for (size_t c = 0; c < group; c += 16) {
      const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + c), inv));
      const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + c + 8), inv));
      // packs interleaves 128-bit lanes: [a0-3 b0-3 a4-7 b4-7]; restore the order.
      const __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + g * group + c), p);
    }
  }
  if (perm) {
    const size_t half = perm / 2;
    for (size_t b = 0; b < n; b += perm)
      for (size_t i = 0; i < half; ++i) {
        xq[b + i] = natural[b + 2 * i];
        xq[b + half + i] = natural[b + 2 * i + 1];
      }
  }
}

MF_AVX2 void qmatmul_rows_avx2(const MatrixView& W, const QuantizedInput& x, float* Y, size_t ldy,
                               size_t r0, size_t r1) {
  const size_t n = W.cols;
  const size_t ds = row_data_bytes(W.fmt, n), ss = row_scale_bytes(W.fmt, n);
  for (size_t t0 = 0; t0 < x.tokens; t0 += kTokens) {
    const size_t nt = std::min(kTokens, x.tokens - t0);
    for (size_t r = r0; r < r1; ++r) {
      const uint8_t* q = W.data + r * ds;
      const uint8_t* sc = W.scales + r * ss;
      float* out = Y + t0 * ldy + r;
      if (W.fmt.kind == QuantKind::Q8_0) {
        row_q8_0(q, sc, x, t0, nt, out, ldy);
        continue;
      }
      const uint8_t* bi = W.biases + r * ss;
      switch (W.fmt.group) {
        case 32:
          row_affine4<32>(q, sc, bi, x, t0, nt, out, ldy);
          break;
        case 64:
          row_affine4<64>(q, sc, bi, x, t0, nt, out, ldy);
          break;
        default:
          row_affine4<128>(q, sc, bi, x, t0, nt, out, ldy);
          break;
      }
    }
  }
}

}  // namespace moeflux::cpu::detail

#endif  // __x86_64__
