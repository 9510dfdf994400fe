// KeptBlocks: the index behind CudaBackend::keep (byte blocks kept by content in an arena).
#include "core/kept_blocks.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

namespace moeflux {
namespace {

// An arena filled front to back, as keep() fills it, with the index beside it.
struct Arena {
  std::vector<uint8_t> bytes;
  KeptBlocks index;
  size_t keep(const std::vector<uint8_t>& b) {
    const uint64_t h = KeptBlocks::hash(b.data(), b.size());
    const size_t found = index.find(b.data(), b.size(), h, bytes.data());
    if (found != KeptBlocks::npos) return found;
    const size_t offset = bytes.size();
    bytes.insert(bytes.end(), b.begin(), b.end());
    index.add(h, offset, b.size());
    return offset;
  }
};

std::vector<uint8_t> random_bytes(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> b(n);
  for (uint8_t& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

TEST(KeptBlocks, EqualBytesAreFoundAgainAndOthersAreNot) {
  std::mt19937_64 rng(7);
  Arena a;
  std::vector<std::vector<uint8_t>> blocks;
  std::vector<size_t> offsets;
  // Lengths 9 .. 300: tails of every size, and no two random blocks alike (short ones could be).
  for (size_t i = 0; i < 2000; ++i) {
    blocks.push_back(random_bytes(rng, 9 + rng() % 292));
    offsets.push_back(a.keep(blocks.back()));
  }
  const size_t used = a.bytes.size();
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_EQ(a.keep(blocks[i]), offsets[i]) << "block " << i;
    std::vector<uint8_t> other = blocks[i];
    other[rng() % other.size()] ^= 1;  // one bit different
    EXPECT_EQ(a.index.find(other.data(), other.size(), KeptBlocks::hash(other.data(), other.size()),
                           a.bytes.data()),
              KeptBlocks::npos);
  }
  EXPECT_EQ(a.bytes.size(), used);  // nothing added twice
  EXPECT_EQ(a.index.size(), blocks.size());
}

TEST(KeptBlocks, LengthAndEveryByteChangeTheHash) {
  std::vector<uint8_t> zeros(64, 0);
  EXPECT_NE(KeptBlocks::hash(zeros.data(), 8), KeptBlocks::hash(zeros.data(), 16));
  EXPECT_NE(KeptBlocks::hash(zeros.data(), 3), KeptBlocks::hash(zeros.data(), 4));
  const uint64_t h0 = KeptBlocks::hash(zeros.data(), zeros.size());
  for (size_t i = 0; i < zeros.size(); ++i) {
    std::vector<uint8_t> b = zeros;
    b[i] = 1;
    EXPECT_NE(KeptBlocks::hash(b.data(), b.size()), h0) << "byte " << i;
  }
}

TEST(KeptBlocks, EqualHashesOfDifferentBytesAreToldApart) {
  // The index is given the same hash for different contents: the byte comparison decides.
  const std::vector<uint8_t> x = {1, 2, 3, 4}, y = {4, 3, 2, 1}, z = {1, 2, 3};
  std::vector<uint8_t> arena = x;
  arena.insert(arena.end(), y.begin(), y.end());
  KeptBlocks k;
  k.add(42, 0, x.size());
  EXPECT_EQ(k.find(y.data(), y.size(), 42, arena.data()), KeptBlocks::npos);
  EXPECT_EQ(k.find(z.data(), z.size(), 42, arena.data()), KeptBlocks::npos);  // a prefix of x
  k.add(42, 4, y.size());
  EXPECT_EQ(k.find(x.data(), x.size(), 42, arena.data()), 0u);
  EXPECT_EQ(k.find(y.data(), y.size(), 42, arena.data()), 4u);
  EXPECT_EQ(k.find(y.data(), y.size(), 43, arena.data()), KeptBlocks::npos);
}

TEST(KeptBlocks, TruncateForgetsTheBlocksAddedAfterTheMark) {
  std::mt19937_64 rng(11);
  Arena a;
  std::vector<std::vector<uint8_t>> blocks;
  for (size_t i = 0; i < 40; ++i) {
    blocks.push_back(random_bytes(rng, 24));
    a.keep(blocks.back());
  }
  a.keep(blocks[3]);  // found: no new block
  ASSERT_EQ(a.index.size(), 40u);
  a.index.truncate(25);
  EXPECT_EQ(a.index.size(), 25u);
  for (size_t i = 0; i < blocks.size(); ++i) {
    const size_t found = a.index.find(blocks[i].data(), blocks[i].size(),
                                      KeptBlocks::hash(blocks[i].data(), 24), a.bytes.data());
    if (i < 25)
      EXPECT_EQ(found, i * 24) << "block " << i;
    else
      EXPECT_EQ(found, KeptBlocks::npos) << "block " << i;
  }
  a.index.add(KeptBlocks::hash(blocks[30].data(), 24), 30 * 24, 24);  // kept again
  EXPECT_EQ(
      a.index.find(blocks[30].data(), 24, KeptBlocks::hash(blocks[30].data(), 24), a.bytes.data()),
      30u * 24);
  a.index.clear();
  EXPECT_EQ(a.index.size(), 0u);
  EXPECT_EQ(
      a.index.find(blocks[0].data(), 24, KeptBlocks::hash(blocks[0].data(), 24), a.bytes.data()),
      KeptBlocks::npos);
}

}  // namespace
}  // namespace moeflux
