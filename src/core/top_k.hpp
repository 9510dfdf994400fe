// The k best values of a float array: the sampler's top-k over a vocabulary's logits, shared by
// the sampler and the CPU backend's top_k_rows (whose GPU twin must give the same answer).
#pragma once

#include <cstddef>
#include <span>
#include <vector>

namespace moeflux {

struct TopEntry {
  int id = 0;
  float value = 0;
};

// "Better" in the order of the whole sampler chain: value descending, then id ascending.
inline bool better_entry(const TopEntry& a, const TopEntry& b) {
  return a.value > b.value || (a.value == b.value && a.id < b.id);
}

// The min(k, x.size()) best entries of x into `out`, best first; NaN ranks as -inf and is
// reported as -inf. One pass keeping a heap whose front is the worst of the k best so far; once
// it is full, a block of 64 values whose largest is not above the front is skipped whole (an
// equal value has a larger id, so it ranks below): after the first few blocks nearly every block
// is, and the pass runs at the speed of the blocks' vector maxima.
void top_k(std::span<const float> x, size_t k, std::vector<TopEntry>& out);

}  // namespace moeflux
