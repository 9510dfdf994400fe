// Rotary position embedding tables (transformers' default, linear and YaRN variants).
//
// For rotary dim d (= head_dim * partial_rotary_factor) and i in [0, d/2):
//   default: inv_freq[i] = theta^(-2i/d)
//   linear : inv_freq[i] = theta^(-2i/d) / factor
//   yarn   : inv_freq[i] = interp[i] * (1 - e[i]) + extrap[i] * e[i], where extrap = theta^(-2i/d),
//            interp = extrap / factor, e = 1 - clamp((i - low) / (high - low), 0, 1) and
//            [low, high] is the correction range for beta_fast / beta_slow rotations over
//            original_max_position_embeddings; cos and sin are scaled by the attention factor
//            (0.1 ln(factor) + 1 unless given, or the mscale ratio).
// Applied (Backend::rope, from the table below) with the rotate_half convention on the first d
// dims of each head:
//   x'[j]       = x[j] cos(p f_j) - x[j + d/2] sin(p f_j)
//   x'[j + d/2] = x[j + d/2] cos(p f_j) + x[j] sin(p f_j)
#pragma once

#include <vector>

#include "model/config.hpp"

namespace moeflux {

// YaRN's magnitude correction for a context stretched `scale` times: 0.1 mscale ln(scale) + 1
// (1 when scale <= 1).
double yarn_mscale(double scale, double mscale);

class Rope {
 public:
  explicit Rope(const ModelConfig& c);

  int rotary_dim() const { return rotary_dim_; }
  float attention_factor() const { return attention_factor_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }

  // The table of positions [0, positions): cos[p * half + i] = cos(p · inv_freq[i]) · factor,
  // sin likewise (half = rotary_dim / 2): the angle p · inv_freq[i] in float32, as transformers
  // computes it.
  void fill_table(size_t positions, float* cos, float* sin) const;

 private:
  int rotary_dim_ = 0;
  float attention_factor_ = 1.0f;
  std::vector<float> inv_freq_;
};

}  // namespace moeflux
