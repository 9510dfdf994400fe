// What the kernel counts of this process's storage traffic.
#pragma once

#include <cstdint>
#include <fstream>
#include <optional>
#include <string>

namespace moeflux {

// Bytes this process (all its threads) has read from storage devices so far: Linux's
// /proc/self/io read_bytes, which counts page-cache misses (readahead included) and O_DIRECT
// reads, not page-cache hits. nullopt where the kernel does not report it.
inline std::optional<uint64_t> process_storage_read_bytes() {
  std::ifstream in("/proc/self/io");
  std::string key;
  uint64_t value = 0;
  while (in >> key >> value)
    if (key == "read_bytes:") return value;
  return std::nullopt;
}

}  // namespace moeflux
