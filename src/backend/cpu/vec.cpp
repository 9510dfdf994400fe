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

void dot_rows_scalar(const float* q, const float* base, size_t stride, size_t n, size_t dim,
                     float s, float* out) {
  for (size_t j = 0; j < n; ++j) out[j] = dot_scalar(q, base + j * stride, dim) * s;
}
void weighted_rows_scalar(const float* w, const float* base, size_t stride, size_t n, size_t dim,
                          float* o) {
  for (size_t d = 0; d < dim; ++d) o[d] = 0.0f;
  for (size_t j = 0; j < n; ++j) axpy_scalar(w[j], base + j * stride, o, dim);
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

MF_AVX512 void dot_rows_avx512(const float* q, const float* base, size_t stride, size_t n,
                               size_t dim, float s, float* out) {
  if (dim % 16 != 0) {
    for (size_t j = 0; j < n; ++j) out[j] = dot_avx512(q, base + j * stride, dim) * s;
    return;
  }
  for (size_t j = 0; j < n; ++j) {
    const float* k = base + j * stride;
    __m512 a = _mm512_setzero_ps();
    for (size_t d = 0; d < dim; d += 16)
      a = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d), a);
    out[j] = _mm512_reduce_add_ps(a) * s;
  }
}
// o = Σ_j w[j] rows[j], 64 output dims in registers at a time.
MF_AVX512 void weighted_rows_avx512(const float* w, const float* base, size_t stride, size_t n,
                                    size_t dim, float* o) {
  size_t d = 0;
  for (; d + 64 <= dim; d += 64) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t j = 0; j < n; ++j) {
      const float* v = base + j * stride + d;
      const __m512 wj = _mm512_set1_ps(w[j]);
      a0 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(v), a0);
      a1 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(v + 16), a1);
      a2 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(v + 32), a2);
      a3 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(v + 48), a3);
    }
    _mm512_storeu_ps(o + d, a0);
    _mm512_storeu_ps(o + d + 16, a1);
    _mm512_storeu_ps(o + d + 32, a2);
    _mm512_storeu_ps(o + d + 48, a3);
  }
  for (; d < dim; ++d) {
    float a = 0.0f;
    for (size_t j = 0; j < n; ++j) a += w[j] * base[j * stride + d];
    o[d] = a;
  }
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
MF_AVX2 void dot_rows_avx2(const float* q, const float* base, size_t stride, size_t n, size_t dim,
                           float s, float* out) {
  if (dim % 8 != 0) {
    for (size_t j = 0; j < n; ++j) out[j] = dot_avx2(q, base + j * stride, dim) * s;
    return;
  }
  for (size_t j = 0; j < n; ++j) {
    const float* k = base + j * stride;
    __m256 a = _mm256_setzero_ps();
    for (size_t d = 0; d < dim; d += 8)
      a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), a);
    out[j] = hsum256(a) * s;
  }
}
MF_AVX2 void weighted_rows_avx2(const float* w, const float* base, size_t stride, size_t n,
                                size_t dim, float* o) {
  size_t d = 0;
  for (; d + 32 <= dim; d += 32) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t j = 0; j < n; ++j) {
      const float* v = base + j * stride + d;
      const __m256 wj = _mm256_set1_ps(w[j]);
      a0 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v), a0);
      a1 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v + 8), a1);
      a2 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v + 16), a2);
      a3 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v + 24), a3);
    }
    _mm256_storeu_ps(o + d, a0);
    _mm256_storeu_ps(o + d + 8, a1);
    _mm256_storeu_ps(o + d + 16, a2);
    _mm256_storeu_ps(o + d + 24, a3);
  }
  for (; d < dim; ++d) {
    float a = 0.0f;
    for (size_t j = 0; j < n; ++j) a += w[j] * base[j * stride + d];
    o[d] = a;
  }
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

void dot_rows(const float* q, const float* base, size_t stride, size_t n, size_t dim, float s,
              float* out) {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::Avx512:
      return dot_rows_avx512(q, base, stride, n, dim, s, out);
    case Isa::Avx2:
      return dot_rows_avx2(q, base, stride, n, dim, s, out);
    default:
      break;
  }
#endif
  dot_rows_scalar(q, base, stride, n, dim, s, out);
}

void weighted_rows(const float* w, const float* base, size_t stride, size_t n, size_t dim,
                   float* o) {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::Avx512:
      return weighted_rows_avx512(w, base, stride, n, dim, o);
    case Isa::Avx2:
      return weighted_rows_avx2(w, base, stride, n, dim, o);
    default:
      break;
  }
#endif
  weighted_rows_scalar(w, base, stride, n, dim, o);
}

}  // namespace moeflux::cpu

#if defined(__x86_64__)
#pragma GCC diagnostic pop
#endif
