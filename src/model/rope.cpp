#include "model/rope.hpp"

#include <algorithm>
#include <cmath>

namespace moeflux {

namespace {

// Dimension index at which a frequency completes `rotations` turns over `max_pos` positions.
double correction_dim(double rotations, int dim, double base, double max_pos) {
  return dim * std::log(max_pos / (rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
}

}  // namespace

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

Rope::Rope(const ModelConfig& c) : rotary_dim_(c.rotary_dim()) {
  const RopeConfig& r = c.rope;
  const int d = rotary_dim_;
  const int half = d / 2;
  inv_freq_.resize(half);
  for (int i = 0; i < half; ++i) {
    // torch: base ** (arange(0, d, 2).float() / d), in float32.
    const float expo = static_cast<float>(2 * i) / static_cast<float>(d);
    inv_freq_[i] = 1.0f / std::pow(static_cast<float>(r.theta), expo);
  }
  if (r.type == "linear") {
    for (auto& f : inv_freq_) f = static_cast<float>(f / r.factor);
  } else if (r.type == "yarn") {
    const double max_pos = r.original_max_position_embeddings > 0
                               ? r.original_max_position_embeddings
                               : c.max_position_embeddings;
    double low = correction_dim(r.beta_fast, d, r.theta, max_pos);
    double high = correction_dim(r.beta_slow, d, r.theta, max_pos);
    if (r.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(d - 1));
    if (low == high) high += 0.001;  // avoid a zero-width ramp
    for (int i = 0; i < half; ++i) {
      const float extrap = inv_freq_[i];
      const float interp = static_cast<float>(extrap / r.factor);
      const float ramp =
          std::clamp(static_cast<float>((i - low) / (high - low)), 0.0f, 1.0f);
      const float e = 1.0f - ramp;
      inv_freq_[i] = interp * (1.0f - e) + extrap * e;
    }
    if (r.attention_factor > 0) {
      attention_factor_ = static_cast<float>(r.attention_factor);
    } else if (r.mscale != 0 && r.mscale_all_dim != 0) {
      attention_factor_ = static_cast<float>(yarn_mscale(r.factor, r.mscale) /
                                             yarn_mscale(r.factor, r.mscale_all_dim));
    } else {
      attention_factor_ = static_cast<float>(yarn_mscale(r.factor, 1.0));
    }
  }
}

void Rope::fill_table(size_t positions, float* cs, float* sn) const {
  const size_t half = static_cast<size_t>(rotary_dim_ / 2);
  for (size_t p = 0; p < positions; ++p)
    for (size_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv_freq_[i];
      cs[p * half + i] = std::cos(angle) * attention_factor_;
      sn[p * half + i] = std::sin(angle) * attention_factor_;
    }
}

}  // namespace moeflux
