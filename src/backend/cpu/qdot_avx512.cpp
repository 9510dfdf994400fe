// AVX-512 (F, BW) integer dot products (qdot.hpp): int16 inputs, vpmaddwd over 32 weights at a
// time, up to four tokens per pass over a row. Same structure as qdot_avx2.cpp, twice as wide;
// 4-bit inputs are permuted in 64-blocks.
#if defined(__x86_64__)

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/matvec_kernels.hpp"
#include "backend/cpu/matvec.hpp"
#include "core/dtype.hpp"

#define MF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

namespace moeflux::cpu::detail {
namespace {

constexpr size_t kTokens = 4;

MF_AVX512 inline __m256i load256(const void* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
MF_AVX512 inline __m512i load512(const void* p) {
  return _mm512_loadu_si512(p);
}
MF_AVX512 inline __m512 bf16x16(const uint8_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load256(p)), 16));
}

MF_AVX512 float bias_dot(const uint8_t* b, const float* xsum, size_t ng) {
  __m512 acc = _mm512_setzero_ps();
  size_t g = 0;
  for (; g + 16 <= ng; g += 16)
    acc = _mm512_fmadd_ps(bf16x16(b + 2 * g), _mm512_loadu_ps(xsum + g), acc);
  float s = _mm512_reduce_add_ps(acc);
  for (; g < ng; ++g) s += bf16_to_f32(load_u16(b + 2 * g)) * xsum[g];
  return s;
}

// Σ q·xq of the 64-block whose inputs start at xq, as 16 int32 lanes: lanes 0-7 hold the
// block's first 32 elements (evens from the low nibbles of bytes 0-15, odds from their high
// nibbles), lanes 8-15 the last 32.
MF_AVX512 inline __m512i block64(const int16_t* xq, __m512i lo, __m512i hi) {
  return _mm512_add_epi32(_mm512_madd_epi16(lo, load512(xq)),
                          _mm512_madd_epi16(hi, load512(xq + 32)));
}

// One row of a 4-bit Affine matrix against nt <= kTokens prepared inputs (perm 64).
template <size_t G>
MF_AVX512 void row_affine4(const uint8_t* q, const uint8_t* sc, const uint8_t* bi,
                           const QuantizedInput& x, size_t t0, size_t nt, float* out,
                           size_t ldy) {
  const size_t n = x.n, ng = n / G;
  const __m512i low4 = _mm512_set1_epi16(0x0f);
  __m512 acc[kTokens];
  for (size_t t = 0; t < nt; ++t) acc[t] = _mm512_setzero_ps();
  if constexpr (G == 32) {
    for (size_t c = 0; c < n; c += 64) {
      const size_t g = c / 32;
      const __m512i w = _mm512_cvtepu8_epi16(load256(q + c / 2));
      const __m512i lo = _mm512_and_si512(w, low4), hi = _mm512_srli_epi16(w, 4);
      const float s0 = bf16_to_f32(load_u16(sc + 2 * g)), s1 = bf16_to_f32(load_u16(sc + 2 * g + 2));
      for (size_t t = 0; t < nt; ++t) {
        const float* d = x.scale(t0 + t);
        const __m512 scale =
            _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(s0 * d[g]), _mm512_set1_ps(s1 * d[g + 1]));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(block64(x.q(t0 + t) + c, lo, hi)), scale,
                                 acc[t]);
      }
    }
  } else {
    for (size_t g = 0; g < ng; ++g) {
      __m512i gi[kTokens];
      for (size_t t = 0; t < nt; ++t) gi[t] = _mm512_setzero_si512();
      for (size_t b = 0; b < G / 64; ++b) {
        const size_t c = g * G + 64 * b;
        const __m512i w = _mm512_cvtepu8_epi16(load256(q + c / 2));
        const __m512i lo = _mm512_and_si512(w, low4), hi = _mm512_srli_epi16(w, 4);
        for (size_t t = 0; t < nt; ++t)
          gi[t] = _mm512_add_epi32(gi[t], block64(x.q(t0 + t) + c, lo, hi));
      }
      const float s = bf16_to_f32(load_u16(sc + 2 * g));
      for (size_t t = 0; t < nt; ++t)
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(gi[t]),
                                 _mm512_set1_ps(s * x.scale(t0 + t)[g]), acc[t]);
    }
  }
  for (size_t t = 0; t < nt; ++t)
    out[t * ldy] = _mm512_reduce_add_ps(acc[t]) + bias_dot(bi, x.sum(t0 + t), ng);
}

MF_AVX512 void row_q8_0(const uint8_t* q, const uint8_t* sc, const QuantizedInput& x, size_t t0,
                        size_t nt, float* out, size_t ldy) {
  const size_t ng = x.n / 32;
  __m512 acc[kTokens];
  for (size_t t = 0; t < nt; ++t) acc[t] = _mm512_setzero_ps();
  for (size_t g = 0; g < ng; ++g) {
    const __m512i w = _mm512_cvtepi8_epi16(load256(q + 32 * g));
    const float s = f16_to_f32(load_u16(sc + 2 * g));
    for (size_t t = 0; t < nt; ++t) {
      const __m512i p = _mm512_madd_epi16(w, load512(x.q(t0 + t) + 32 * g));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(s * x.scale(t0 + t)[g]),
                               acc[t]);
    }
  }
  for (size_t t = 0; t < nt; ++t) out[t * ldy] = _mm512_reduce_add_ps(acc[t]);
}

}  // namespace

MF_AVX512 void quantize_rows_avx512(const float* x, size_t n, size_t group, size_t perm,
                                    int16_t* xq, float* d, float* xsum) {
  thread_local std::vector<int16_t> natural;
  int16_t* dst = xq;
  if (perm) {
    if (natural.size() < n) natural.resize(n);
    dst = natural.data();
  }
  for (size_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    __m512 mx = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
    for (size_t c = 0; c < group; c += 16) {
      const __m512 v = _mm512_loadu_ps(xg + c);
      mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
      sum = _mm512_add_ps(sum, v);
    }
    const float amax = _mm512_reduce_max_ps(mx);
    d[g] = amax / 32767.0f;
    xsum[g] = _mm512_reduce_add_ps(sum);
    const __m512 inv = _mm512_set1_ps(amax > 0 ? 32767.0f / amax : 0.0f);
    for (size_t c = 0; c < group; c += 16) {
      const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + c), inv));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + g * group + c), _mm512_cvtsepi32_epi16(v));
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

MF_AVX512 void qmatmul_rows_avx512(const MatrixView& W, const QuantizedInput& x, float* Y,
                                   size_t ldy, size_t r0, size_t r1) {
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

#pragma GCC diagnostic pop

#endif  // __x86_64__
