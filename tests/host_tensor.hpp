// Host tensors for the backend op tests: owning, padded pitch, NaN-poisoned until randomised.
#pragma once

#include <random>
#include <vector>

#include "backend/tensor.hpp"
#include "random_weights.hpp"

namespace moeflux::test {

// A host tensor [rows, cols] (or [rows, heads, dim] via heads()) with a padded pitch, owning its
// memory, NaN-poisoned or random.
struct HostTensor {
  std::vector<float> mem;
  Tensor t;
  HostTensor(size_t rows, size_t cols, size_t pad = 3) : mem(rows * (cols + pad) + 1, kNaN) {
    t = Tensor::matrix(mem.data(), rows, cols, cols + pad, Memory::Host);
  }
  void randomize(std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> u(lo, hi);
    for (float& v : mem) v = u(rng);
  }
  float& at(size_t r, size_t c) { return t.row(r)[c]; }
};

}  // namespace moeflux::test
