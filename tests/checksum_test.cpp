#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/crc32c.hpp"

namespace moeflux {
namespace {

// Bit-at-a-time CRC-32C, straight from the definition: the reference both versions must match.
uint32_t crc32c_bitwise(const uint8_t* p, size_t n, uint32_t crc) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int b = 0; b < 8; ++b) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

TEST(Crc32c, KnownValues) {
  const std::string check = "123456789";
  EXPECT_EQ(crc32c(check.data(), check.size()), 0xE3069283u);
  EXPECT_EQ(detail::crc32c_portable(check.data(), check.size(), 0), 0xE3069283u);
  EXPECT_EQ(crc32c(nullptr, 0), 0u);
  // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, of 0xFF.
  std::vector<uint8_t> z(32, 0), f(32, 0xFF);
  EXPECT_EQ(crc32c(z.data(), z.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(f.data(), f.size()), 0x62A8AB43u);
}

// Every length around the implementation's thresholds (8-byte steps, the three-stream split),
// every alignment, both implementations, and incremental use, against the bitwise reference.
TEST(Crc32c, ImplementationsAgreeWithDefinition) {
  std::mt19937 rng(7);
  std::vector<uint8_t> buf((size_t{3} << 17) + 64);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  std::vector<size_t> lengths;
  for (size_t n = 0; n < 70; ++n) lengths.push_back(n);
  for (size_t n : {size_t{65535}, size_t{65536}, size_t{65537}, size_t{65536 + 7}, size_t{196608},
                   size_t{196611}, size_t{3} << 17})
    lengths.push_back(n);
  const bool hw = std::string(crc32c_implementation()) == "sse4.2";
  for (size_t n : lengths) {
    for (size_t align : {size_t{0}, size_t{3}}) {
      const uint8_t* p = buf.data() + align;
      const uint32_t want = crc32c_bitwise(p, n, 0);
      EXPECT_EQ(detail::crc32c_portable(p, n, 0), want) << n;
      EXPECT_EQ(crc32c(p, n), want) << n;
      if (hw) {
        EXPECT_EQ(detail::crc32c_sse42(p, n, 0), want) << n;
      }
      const size_t half = n / 3;
      EXPECT_EQ(crc32c(p + half, n - half, crc32c(p, half)), want) << n;
    }
  }
}

TEST(Crc32c, DetectsSingleBitFlips) {
  std::vector<uint8_t> buf(100000, 0x5A);
  const uint32_t clean = crc32c(buf.data(), buf.size());
  for (size_t pos : {size_t{0}, size_t{4095}, size_t{65536}, size_t{99999}}) {
    buf[pos] ^= 0x10;
    EXPECT_NE(crc32c(buf.data(), buf.size()), clean) << pos;
    buf[pos] ^= 0x10;
  }
}

}  // namespace
}  // namespace moeflux
