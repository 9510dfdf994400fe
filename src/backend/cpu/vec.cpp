#include "backend/cpu/vec.hpp"

#include "backend/cpu/matvec.hpp"

#if defined(__x86_64__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

namespace moeflux::cpu {

namespace {

float dot_scalar(const float* a, const float* b, size_t n) {
  float s = 0.0f;
  for (size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
void axpy_scalar(float s, const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += s * x[i];
}
void scale_scalar(float s, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] *= s;
}

#if defined(__x86_64__)
#define MF_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define MF_AVX2 __attribute__((target("avx2,fma")))

MF_AVX512 float dot_avx512(const float* a, const float* b, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
  float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
MF_AVX512 void axpy_avx512(float s, const float* x, float* y, size_t n) {
  const __m512 sv = _mm512_set1_ps(s);
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(sv, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += s * x[i];
}
MF_AVX512 void scale_avx512(float s, float* y, size_t n) {
  const __m512 sv = _mm512_set1_ps(s);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(sv, _mm512_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] *= s;
}

MF_AVX2 float hsum256(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
MF_AVX2 float dot_avx2(const float* a, const float* b, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum256(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
MF_AVX2 void axpy_avx2(float s, const float* x, float* y, size_t n) {
  const __m256 sv = _mm256_set1_ps(s);
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(sv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += s * x[i];
}
MF_AVX2 void scale_avx2(float s, float* y, size_t n) {
  const __m256 sv = _mm256_set1_ps(s);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(sv, _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] *= s;
}
#endif

}  // namespace

float dot(const float* a, const float* b, size_t n) {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::Avx512:
      return dot_avx512(a, b, n);
    case Isa::Avx2:
      return dot_avx2(a, b, n);
    default:
      break;
  }
#endif
  return dot_scalar(a, b, n);
}

void axpy(float s, const float* x, float* y, size_t n) {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::Avx512:
      return axpy_avx512(s, x, y, n);
    case Isa::Avx2:
      return axpy_avx2(s, x, y, n);
    default:
      break;
  }
#endif
  axpy_scalar(s, x, y, n);
}

void scale(float s, float* y, size_t n) {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::Avx512:
      return scale_avx512(s, y, n);
    case Isa::Avx2:
      return scale_avx2(s, y, n);
    default:
      break;
  }
#endif
  scale_scalar(s, y, n);
}

}  // namespace moeflux::cpu

#if defined(__x86_64__)
#pragma GCC diagnostic pop
#endif
