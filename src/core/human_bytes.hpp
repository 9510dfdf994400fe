// Byte counts for people: "512 B", "1.50 KiB", "3.98 GiB" (binary units).
#pragma once

#include <cstdio>
#include <string>

namespace moeflux {

inline std::string human_bytes(double bytes, int decimals = 2) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f %s", u ? decimals : 0, bytes, units[u]);
  return buf;
}

}  // namespace moeflux
