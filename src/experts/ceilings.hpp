// Measured ceilings of this machine: the physical limits every decode figure is read against
// (docs/DESIGN.md, principle 6). Each measurement is bounded (max_seconds or max_bytes, whichever
// comes first) and reports what it moved, so a figure is never quoted without its basis.
//
//   direct read     : sequential reads of package layer files with O_DIRECT (the device),
//                     block_bytes per read, `threads` readers taking blocks in file order;
//   page-cache read : the same files read once to warm them, then timed buffered reads of that
//                     (memory-sized) set, looping over it (the OS page cache -> user memory);
//   memcpy          : large buffers (beyond the last-level cache), each thread copying its own;
//   expert batches  : decode's access pattern without compute — K distinct random records of one
//                     layer read at once through the engine's ExpertReader, layer after layer,
//                     each batch starting when the previous one has landed.
//
// GB/s are 1e9 bytes per second of payload: bytes read into user buffers, or bytes copied (a
// copy reads and writes each byte: DRAM traffic is about 2x, 3x with write-allocate).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "experts/expert_reader.hpp"
#include "formats/package.hpp"

namespace moeflux {

struct Ceiling {
  bool measured = false;  // false: not measured; `note` says why (e.g. O_DIRECT refused)
  double gb_per_s = 0;    // bytes / seconds / 1e9
  uint64_t bytes = 0;     // payload moved in the timed part
  double seconds = 0;     // wall time of the timed part
  int threads = 0;
  std::string note;  // e.g. "O_DIRECT refused by the file system", "1.0 GiB set, 100% cached"
};

struct CeilingOptions {
  double max_seconds = 1.5;                      // timed part stops after this long...
  uint64_t max_bytes = uint64_t{16} << 30;       // ...or after this many bytes
  size_t block_bytes = size_t{4} << 20;          // bytes per read (a multiple of 4096)
  int threads = 4;                               // readers or copiers; 0 = hardware threads
  uint64_t cache_set_bytes = uint64_t{1} << 30;  // page cache: most bytes warmed (further
                                                 // capped at half of MemAvailable)
  size_t copy_buffer_bytes = size_t{128} << 20;  // memcpy: bytes per thread (source size)
};

// The expert layer files of a package (MoE layers, in layer order).
std::vector<std::string> package_expert_files(const Package& pkg);

// Throws moeflux::Error naming the file for a missing or unreadable file; an O_DIRECT refusal
// (EINVAL from open or the first read) is reported as measured = false with a note instead.
Ceiling measure_direct_read(const std::vector<std::string>& files, const CeilingOptions& opts);
Ceiling measure_page_cache_read(const std::vector<std::string>& files, const CeilingOptions& opts);
Ceiling measure_memcpy(const CeilingOptions& opts);
// With the reader options of a run (`io.mode`, backend, threads); opts.threads is not used.
// An O_DIRECT refusal is reported as measured = false with a note.
Ceiling measure_expert_batches(const Package& pkg, const ReaderOptions& io, int k,
                               const CeilingOptions& opts);

// "1.83 GB/s (7.3 GB in 4.00 s, 4 threads)" or "not measured: <note>".
std::string describe(const Ceiling& c);

}  // namespace moeflux
