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

}  // namespace moeflux::cpu
