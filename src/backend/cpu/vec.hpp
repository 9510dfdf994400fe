// SIMD float32 vector primitives of the CPU ops (attention, DeltaNet, combine), dispatched on
// the instruction set matvec.hpp picked (MOEFLUX_ISA applies). float32 fma accumulation in lanes;
// the scalar path accumulates in order.
#pragma once

#include <cstddef>

namespace moeflux::cpu {

// Σ_i a[i] · b[i]
float dot(const float* a, const float* b, size_t n);
// y[i] += s · x[i]
void axpy(float s, const float* x, float* y, size_t n);
// y[i] = s · y[i]
void scale(float s, float* y, size_t n);

// Attention's two products over rows[j] = base + j * stride (j < n, dim floats each):
//   out[j] = s · Σ_d q[d] rows[j][d]           (dot_rows)
//   o[d]   = Σ_j w[j] rows[j][d]               (weighted_rows; o overwritten)
void dot_rows(const float* q, const float* base, size_t stride, size_t n, size_t dim, float s,
              float* out);
void weighted_rows(const float* w, const float* base, size_t stride, size_t n, size_t dim,
                   float* o);

}  // namespace moeflux::cpu
