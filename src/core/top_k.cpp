#include "core/top_k.hpp"

#include <algorithm>
#include <limits>

namespace moeflux {

void top_k(std::span<const float> x, size_t k, std::vector<TopEntry>& out) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const size_t n = x.size();
  k = std::min(k, n);
  out.clear();
  if (k == 0) return;
  auto offer = [&](size_t i) {
    const TopEntry e{int(i), x[i] == x[i] ? x[i] : kNegInf};
    if (out.size() < k) {
      out.push_back(e);
      std::push_heap(out.begin(), out.end(), better_entry);
    } else if (better_entry(e, out.front())) {
      std::pop_heap(out.begin(), out.end(), better_entry);
      out.back() = e;
      std::push_heap(out.begin(), out.end(), better_entry);
    }
  };
  constexpr size_t kLanes = 16, kBlock = 4 * kLanes;
  size_t i = 0;
  for (; i < n && out.size() < k; ++i) offer(i);
  for (; i + kBlock <= n; i += kBlock) {
    // The block's maximum in independent lanes; `v > m ? v : m` keeps m for a NaN v, and a block
    // of NaN alone (maximum -inf) may be skipped: NaN ranks as -inf, below or equal to the front.
    float lane[kLanes];
    for (size_t j = 0; j < kLanes; ++j) lane[j] = kNegInf;
    for (size_t b = 0; b < kBlock; b += kLanes)
      for (size_t j = 0; j < kLanes; ++j) lane[j] = x[i + b + j] > lane[j] ? x[i + b + j] : lane[j];
    float m = lane[0];
    for (size_t j = 1; j < kLanes; ++j) m = lane[j] > m ? lane[j] : m;
    if (m > out.front().value)
      for (size_t j = i; j < i + kBlock; ++j) offer(j);
  }
  for (; i < n; ++i) offer(i);
  std::sort(out.begin(), out.end(), better_entry);
}

}  // namespace moeflux
