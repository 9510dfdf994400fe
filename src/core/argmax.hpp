// The index of the largest value of a float array (greedy decoding over a vocabulary's logits).
#pragma once

#include <cstddef>
#include <limits>
#include <span>

namespace moeflux {

// The largest value of x; NaN never counts (-inf when every element is NaN or x is empty). The
// maximum over kLanes independent running maxima: a loop the compiler turns into vector max
// instructions (`v > m ? v : m` keeps m when v is NaN, as the instruction does), where
// std::max_element's every step depends on the one before.
inline float max_value(std::span<const float> x) {
  constexpr size_t kLanes = 16;
  const size_t n = x.size();
  float lane[kLanes];
  for (float& m : lane) m = -std::numeric_limits<float>::infinity();
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (size_t j = 0; j < kLanes; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  float best = -std::numeric_limits<float>::infinity();
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;
  for (const float m : lane) best = m > best ? m : best;
  return best;
}

// The first (lowest) index holding the maximum of x; NaN never counts as a maximum (0 when every
// element is NaN or x is empty). Two passes: max_value, then the first index holding it. Over a
// 151,936-entry vocabulary this takes a fraction of std::max_element's time (dev machine: 60
// against 125-460 us).
inline size_t argmax(std::span<const float> x) {
  const size_t n = x.size();
  const float best = max_value(x);
  for (size_t i = 0; i < n; ++i)
    if (x[i] == best) return i;
  return 0;
}

}  // namespace moeflux
