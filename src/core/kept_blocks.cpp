#include "core/kept_blocks.hpp"

#include <cstring>

namespace moeflux {

namespace {

constexpr uint64_t kMul = 0x9e3779b97f4a7c15ull;  // 2^64 / golden ratio, odd

uint64_t fold(uint64_t h) {
  return h ^ (h >> 31);
}

}  // namespace

uint64_t KeptBlocks::hash(const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  uint64_t h = 0x243f6a8885a308d3ull;  // the first digits of pi: any non-zero start
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, b + i, 8);
    h = fold((h ^ w) * kMul);
  }
  if (i < n) {
    uint64_t w = 0;
    std::memcpy(&w, b + i, n - i);
    h = fold((h ^ w) * kMul);
  }
  return fold((h ^ n) * kMul);
}

size_t KeptBlocks::find(const void* p, size_t n, uint64_t h, const uint8_t* arena) const {
  const auto [first, last] = by_hash_.equal_range(h);
  for (auto it = first; it != last; ++it) {
    const Block& k = blocks_[it->second];
    if (k.bytes == n && std::memcmp(arena + k.offset, p, n) == 0) return k.offset;
  }
  return npos;
}

void KeptBlocks::add(uint64_t h, size_t offset, size_t n) {
  by_hash_.emplace(h, blocks_.size());
  blocks_.push_back({h, offset, n});
}

void KeptBlocks::truncate(size_t n) {
  while (blocks_.size() > n) {
    const size_t i = blocks_.size() - 1;
    const auto [first, last] = by_hash_.equal_range(blocks_[i].hash);
    for (auto it = first; it != last; ++it)
      if (it->second == i) {
        by_hash_.erase(it);
        break;
      }
    blocks_.pop_back();
  }
}

void KeptBlocks::clear() {
  blocks_.clear();
  by_hash_.clear();
}

}  // namespace moeflux
