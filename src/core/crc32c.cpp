#include "core/crc32c.hpp"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace moeflux {

namespace {

// The reflected polynomial: bit 31 - i holds the coefficient of x^i.
constexpr uint32_t kPoly = 0x82F63B78u;

// ---- GF(2) arithmetic modulo P, in the reflected representation ----

// a * b mod P. Walks a's coefficients from x^0 (bit 31) upwards while b runs through
// b, b*x, b*x^2, ... (multiplying by x is a right shift, reducing by P when x^32 appears).
uint32_t mul_mod(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (uint32_t bit = 1u << 31; bit != 0 && a != 0; bit >>= 1) {
    if (a & bit) {
      product ^= b;
      a ^= bit;
    }
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return product;
}

// x^(2^k) mod P for k = 0..63 (x^1 is 1 << 30).
const std::array<uint32_t, 64>& x_pow2_table() {
  static const std::array<uint32_t, 64> table = [] {
    std::array<uint32_t, 64> t{};
    t[0] = 1u << 30;
    for (size_t k = 1; k < t.size(); ++k) t[k] = mul_mod(t[k - 1], t[k - 1]);
    return t;
  }();
  return table;
}

// The raw register after n zero bytes, starting from `reg`: reg * x^(8n) mod P. (The register
// update is linear, so the CRC register of A followed by B is shift(reg(A), |B|) ^ reg0(B),
// where reg0(B) is B's register started from 0.)
uint32_t shift_zeros(uint32_t reg, uint64_t n) {
  const auto& pow2 = x_pow2_table();
  uint64_t e = n * 8;
  for (size_t k = 0; e != 0; ++k, e >>= 1)
    if (e & 1) reg = mul_mod(pow2[k], reg);
  return reg;
}

// ---- portable: slicing by 8 ----

using Tables = std::array<std::array<uint32_t, 256>, 8>;

const Tables& tables() {
  static const Tables t = [] {
    Tables s{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t r = i;
      for (int b = 0; b < 8; ++b) r = (r & 1) ? (r >> 1) ^ kPoly : r >> 1;
      s[0][i] = r;
    }
    // s[k][i]: byte i followed by k zero bytes.
    for (int k = 1; k < 8; ++k)
      for (uint32_t i = 0; i < 256; ++i) s[k][i] = (s[k - 1][i] >> 8) ^ s[0][s[k - 1][i] & 0xFF];
    return s;
  }();
  return t;
}

uint32_t portable_raw(uint32_t reg, const uint8_t* p, size_t n) {
  const Tables& t = tables();
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= reg;  // little-endian: the register meets the first four bytes
    reg = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF] ^ t[4][(w >> 24) & 0xFF] ^
          t[3][(w >> 32) & 0xFF] ^ t[2][(w >> 40) & 0xFF] ^ t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) reg = (reg >> 8) ^ t[0][(reg ^ *p++) & 0xFF];
  return reg;
}

// ---- SSE4.2 ----

#if defined(__x86_64__)
#define MF_SSE42 __attribute__((target("sse4.2")))

MF_SSE42 uint32_t sse42_serial(uint32_t reg, const uint8_t* p, size_t n) {
  uint64_t r = reg;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    r = _mm_crc32_u64(r, w);
  }
  auto r32 = static_cast<uint32_t>(r);
  for (; n > 0; ++p, --n) r32 = _mm_crc32_u8(r32, *p);
  return r32;
}

// Buffers from this size on run as three interleaved streams (the crc32 instruction has a
// latency of 3 cycles and a throughput of 1, so one stream uses a third of the unit); the join
// costs about a microsecond, which this size makes negligible.
constexpr size_t kInterleaveFrom = size_t{64} << 10;

MF_SSE42 uint32_t sse42_raw(uint32_t reg, const uint8_t* p, size_t n) {
  if (n < kInterleaveFrom) return sse42_serial(reg, p, n);
  const size_t lane = n / 3 / 8 * 8;
  const uint8_t* a = p;
  const uint8_t* b = p + lane;
  const uint8_t* c = p + 2 * lane;
  uint64_t ra = reg, rb = 0, rc = 0;
  for (size_t i = 0; i < lane; i += 8) {
    uint64_t wa, wb, wc;
    std::memcpy(&wa, a + i, 8);
    std::memcpy(&wb, b + i, 8);
    std::memcpy(&wc, c + i, 8);
    ra = _mm_crc32_u64(ra, wa);
    rb = _mm_crc32_u64(rb, wb);
    rc = _mm_crc32_u64(rc, wc);
  }
  uint32_t r = shift_zeros(static_cast<uint32_t>(ra), lane) ^ static_cast<uint32_t>(rb);
  r = shift_zeros(r, lane) ^ static_cast<uint32_t>(rc);
  return sse42_serial(r, p + 3 * lane, n - 3 * lane);
}

bool have_sse42() {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}
#else
bool have_sse42() {
  return false;
}
#endif

}  // namespace

namespace detail {

uint32_t crc32c_portable(const void* data, size_t n, uint32_t crc) {
  return ~portable_raw(~crc, static_cast<const uint8_t*>(data), n);
}

uint32_t crc32c_sse42(const void* data, size_t n, uint32_t crc) {
#if defined(__x86_64__)
  return ~sse42_raw(~crc, static_cast<const uint8_t*>(data), n);
#else
  return crc32c_portable(data, n, crc);
#endif
}

}  // namespace detail

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  return have_sse42() ? detail::crc32c_sse42(data, n, crc) : detail::crc32c_portable(data, n, crc);
}

const char* crc32c_implementation() {
  return have_sse42() ? "sse4.2" : "portable";
}

}  // namespace moeflux
