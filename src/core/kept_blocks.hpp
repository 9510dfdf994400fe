// An index of byte blocks kept by content in an append-only arena (CudaBackend::keep keeps
// small kernel arguments this way, so that the same bytes are copied to the device once and
// found again on every later call): find a block whose bytes equal given bytes, add one, forget
// the blocks added after a mark, clear. Lookups take expected constant time: blocks are hashed
// into a multimap, and a hit is confirmed byte for byte against the arena (equal hashes of
// different bytes are told apart).
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace moeflux {

class KeptBlocks {
 public:
  static constexpr size_t npos = static_cast<size_t>(-1);

  // A 64-bit hash of n bytes, 8 bytes a step (each word xor-ed in, then multiplied by an odd
  // constant and folded; the tail zero-padded; the length mixed in last).
  static uint64_t hash(const void* p, size_t n);

  // The arena offset of a kept block of n bytes with hash h equal to [p, p + n), comparing
  // against arena + offset; npos when there is none.
  size_t find(const void* p, size_t n, uint64_t h, const uint8_t* arena) const;
  // Keeps a block of n bytes with hash h at arena offset `offset`.
  void add(uint64_t h, size_t offset, size_t n);
  size_t size() const { return blocks_.size(); }
  // Forgets the blocks added after the first n.
  void truncate(size_t n);
  void clear();

 private:
  struct Block {
    uint64_t hash = 0;
    size_t offset = 0, bytes = 0;
  };
  std::vector<Block> blocks_;                          // in the order added
  std::unordered_multimap<uint64_t, size_t> by_hash_;  // hash -> index into blocks_
};

}  // namespace moeflux
