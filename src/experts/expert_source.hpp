// Where expert records come from. The streaming cache and prefetch (a later issue) wrap this
// interface; the forward pass only asks "give me these experts of this layer".
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/thread_pool.hpp"
#include "formats/package.hpp"

namespace moeflux {

// Counters of one source, cumulative since construction.
struct ExpertReadStats {
  uint64_t records = 0;  // expert records delivered
  uint64_t bytes = 0;    // bytes read from storage
  double seconds = 0;    // wall time spent inside read()
};

class ExpertSource {
 public:
  virtual ~ExpertSource() = default;
  // Fills dst[i] (record_bytes, 4096-aligned) with the record of expert experts[i] of MoE layer
  // `layer`. All reads of one call are in flight at once. Throws moeflux::Error naming the file
  // on any failure (I/O error, short read); dst contents are then unspecified.
  virtual void read(int layer, std::span<const int> experts, std::span<uint8_t* const> dst) = 0;
  virtual const ExpertReadStats& stats() const = 0;
};

// Reads records with pread(2) from the package's layer files, one I/O thread per in-flight
// record (a pool of `io_threads`).
std::unique_ptr<ExpertSource> make_pread_expert_source(const Package& pkg, size_t io_threads);

}  // namespace moeflux
