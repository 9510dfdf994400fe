// Elementwise and small vector operations of the forward pass, CPU, float32.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moeflux::cpu {

// y[i] = x[i] / sqrt(mean(x^2) + eps) * (zero_centered ? 1 + w[i] : w[i]).  y may alias x.
void rmsnorm(const float* x, const float* w, float* y, size_t n, float eps, bool zero_centered);

// x[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i], written into gate.
void silu_mul(float* gate, const float* up, size_t n);

float sigmoid(float x);
float silu(float x);
// log(1 + exp(x)), as torch.nn.functional.softplus (beta 1, threshold 20).
float softplus(float x);

// In place: x /= sqrt(sum(x^2) + eps).
void l2norm(float* x, size_t n, float eps);

// In place softmax over n values (max-subtracted).
void softmax(float* x, size_t n);

// The k largest values' indices, largest first, ties broken by the lower index, into out[k]
// (k <= n). No allocation.
void top_k(const float* x, size_t n, size_t k, int32_t* out);

}  // namespace moeflux::cpu
