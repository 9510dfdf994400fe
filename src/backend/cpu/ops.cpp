#include "backend/cpu/ops.hpp"

#include <algorithm>
#include <cmath>

namespace moeflux::cpu {

void rmsnorm(const float* x, const float* w, float* y, size_t n, float eps, bool zero_centered) {
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (size_t i = 0; i < n; ++i) y[i] = x[i] * inv * (zero_centered ? 1.0f + w[i] : w[i]);
}

float sigmoid(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}
float silu(float x) {
  return x / (1.0f + std::exp(-x));
}
float softplus(float x) {
  return x > 20.0f ? x : std::log1p(std::exp(x));
}

void silu_mul(float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) gate[i] = silu(gate[i]) * up[i];
}

void l2norm(float* x, size_t n, float eps) {
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss + eps));
  for (size_t i = 0; i < n; ++i) x[i] *= inv;
}

void softmax(float* x, size_t n) {
  const float mx = *std::max_element(x, x + n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (size_t i = 0; i < n; ++i) x[i] *= inv;
}

void top_k(const float* x, size_t n, size_t k, int32_t* out) {
  // Insertion into a sorted list of the best k so far: k is small (the experts per token).
  if (k == 0) return;
  size_t have = 0;
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (have == k && !(v > x[out[k - 1]])) continue;  // not better than the worst kept
    size_t j = have < k ? have++ : k - 1;
    while (j > 0 && v > x[out[j - 1]]) {
      out[j] = out[j - 1];
      --j;
    }
    out[j] = static_cast<int32_t>(i);
  }
}

}  // namespace moeflux::cpu
