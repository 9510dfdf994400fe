// The guard between a model's output and whatever uses it (the sampler, a .npy file, a
// perplexity): logits must be finite. A NaN or an infinity means broken weights or an overflow,
// never a prediction, and is reported instead of being sampled from or written.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "core/error.hpp"

namespace moeflux {

// True if every value is finite. A float is NaN or infinite iff its 8 exponent bits are all ones;
// the loop has no early exit, so it vectorizes (a vocabulary of 250k in well under a millisecond).
inline bool all_finite(std::span<const float> v) {
  uint32_t bad = 0;
  for (float f : v) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

// Throws moeflux::Error "<what>: non-finite logits (nan) at position P: ..." if the rows of
// `logits` ([rows, vocab], row r at sequence position first_position + r) hold a NaN or an
// infinity.
inline void require_finite_logits(std::span<const float> logits, size_t vocab,
                                  size_t first_position, const std::string& what) {
  if (all_finite(logits)) return;
  size_t i = 0;
  while (i < logits.size() && std::isfinite(logits[i])) ++i;
  fail(what + ": the model produced non-finite logits (" +
       (std::isnan(logits[i]) ? "NaN" : "infinity") + ") at position " +
       std::to_string(first_position + i / vocab) +
       ": its weights hold NaN or infinity, or the computation overflowed");
}

}  // namespace moeflux
