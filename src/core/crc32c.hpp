// CRC-32C (Castagnoli): the checksum of package records and tensors (docs/FORMAT.md).
//
// Polynomial 0x1EDC6F41 (reflected 0x82F63B78), initial value and final xor 0xFFFFFFFF, as in
// iSCSI, ext4 and the SSE4.2 `crc32` instruction; crc32c("123456789") = 0xE3069283.
// Incremental: crc32c(b, nb, crc32c(a, na)) == crc32c(a followed by b).
//
// On x86-64 CPUs with SSE4.2 (chosen at run time) three interleaved instruction streams run at
// about one 8-byte step per cycle, and their results are joined with crc32c_shift (the CRC of
// a message followed by n zero bytes, computed in GF(2)); elsewhere a table-driven portable
// version. Both give identical results (tests/checksum_test.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace moeflux {

uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

// "sse4.2" or "portable": what crc32c() uses on this machine.
const char* crc32c_implementation();

namespace detail {
uint32_t crc32c_portable(const void* data, size_t n, uint32_t crc);
// Only where crc32c_implementation() is "sse4.2".
uint32_t crc32c_sse42(const void* data, size_t n, uint32_t crc);
}  // namespace detail

}  // namespace moeflux
