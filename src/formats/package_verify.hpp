// Checks a package's bytes against the CRC-32C checksums of its manifest (format version 2 on,
// docs/FORMAT.md): at open (resident tensors), by `moeflux verify` (everything) and, for expert
// records read while a model runs, by the expert readers (experts/expert_reader.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "formats/package.hpp"

namespace moeflux {

// Progress of a check: bytes checked so far and in all. Called on the calling thread only,
// a few times a second and once at the end.
using VerifyProgress = std::function<void(uint64_t done, uint64_t total)>;

// Checks every resident tensor (the mapped resident.bin) on up to `threads` threads (0: the
// hardware's, at most 8). Throws moeflux::Error naming the first corrupt tensor in manifest
// order: "<dir>/resident.bin: tensor 'NAME' is corrupt (crc32c 0x..., the manifest says
// 0x...)". Does nothing for a package without checksums.
void verify_resident(const Package& pkg, unsigned threads = 0, const VerifyProgress& progress = {});

// Reads every expert record of every layer file (O_DIRECT where the filesystem allows it, so a
// package of hundreds of GB does not evict the page cache) and checks it. Throws naming the
// first corrupt record (file, layer, expert), or a read error. Does nothing without checksums.
void verify_expert_records(const Package& pkg, unsigned threads = 0,
                           const VerifyProgress& progress = {});

// The error for an expert record whose bytes do not match its checksum (every checker uses it).
std::string corrupt_record_error(const std::string& file, int layer, int expert, uint32_t found,
                                 uint32_t expected);

}  // namespace moeflux
