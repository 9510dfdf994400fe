// The expert path of DESIGN.md, host side: a RAM cache of expert records over the storage
// (page cache / NVMe), prefetch, and the counters that explain where every byte came from.
//
// Tiers, fastest first: [GPU slots (CUDA issue)] <- RAM cache (this) <- page cache <- device.
// The RAM cache holds whole records in one 4096-aligned arena of slots. Besides the budgeted
// cache slots there are 3*K working slots (the records being computed on plus prefetches in
// flight), so a budget of 0 still streams: records are then dropped as soon as they are used.
//
// Single-threaded use: one session thread calls prefetch / acquire / release; reads complete
// on the reader's threads and only touch their ReadOp.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "experts/cache_policy.hpp"
#include "experts/expert_reader.hpp"
#include "formats/package.hpp"

namespace moeflux {

enum class PrefetchMode { None, Temporal, Lookahead, Both };
enum class PrefetchKind { Temporal = 0, Lookahead = 1 };
PrefetchMode parse_prefetch_mode(const std::string& s);  // none|temporal|lookahead|both
const char* prefetch_mode_name(PrefetchMode m);
inline bool uses(PrefetchMode m, PrefetchKind k) {
  return m == PrefetchMode::Both ||
         (k == PrefetchKind::Temporal ? m == PrefetchMode::Temporal : m == PrefetchMode::Lookahead);
}

// "4G", "512M", "100k", "0", plain bytes; binary units. Throws moeflux::Error naming `what`.
size_t parse_byte_size(const std::string& s, const std::string& what);

struct StreamOptions {
  size_t ram_cache_bytes = 0;     // --ram-cache
  std::string policy = "lfu";     // --cache-policy (default chosen by measurement, docs/PERF.md)
  PrefetchMode prefetch = PrefetchMode::None;
  ReaderOptions io;
  int max_active = 8;             // experts per token (K); sizes the working slots
  size_t hot_per_layer = 0;       // --hot N: keep each layer's N most used experts resident
  // Tests: builds the reader instead of make_expert_reader (e.g. a fault-injecting one).
  std::function<std::unique_ptr<ExpertReader>(const Package&, const ReaderOptions&)> reader_factory;
};

struct LayerStreamStats {
  uint64_t requests = 0;       // expert records asked for by compute
  uint64_t ram_hits = 0;       // found ready in the RAM cache (not brought by prefetch)
  uint64_t prefetch_hits = 0;  // brought (or being brought) by a prefetch
  uint64_t misses = 0;         // read on demand
  double io_wait_seconds = 0;  // compute blocked on reads
};

struct PrefetchStats {
  uint64_t predictions = 0;  // experts predicted
  uint64_t correct = 0;      // predicted experts that the next request of that layer used
  uint64_t reads = 0;        // records read because of a prediction
  uint64_t wasted_reads = 0; // of those, not used by the next request of that layer
};

struct StreamStats {
  std::vector<LayerStreamStats> layers;
  std::array<PrefetchStats, 2> prefetch;  // by PrefetchKind
  uint64_t storage_reads = 0;  // records read from the layer files (demand + prefetch)
  uint64_t evictions = 0;

  LayerStreamStats total() const;
};

class ExpertStreamer {
 public:
  ExpertStreamer(const Package& pkg, const StreamOptions& opts);
  ~ExpertStreamer();
  ExpertStreamer(const ExpertStreamer&) = delete;
  ExpertStreamer& operator=(const ExpertStreamer&) = delete;

  // Starts reading `experts` of `layer` that are not already present (fire and forget).
  // Skipped for experts no slot can be freed for.
  void prefetch(int layer, std::span<const int> experts, PrefetchKind kind);

  // Makes the records available and pinned until release(): out[i] points at the record of
  // experts[i]. All misses are submitted at once; waits only for reads still in flight.
  // Throws moeflux::Error if a read fails; the streamer stays usable (failed entries are
  // dropped, pins released).
  void acquire(int layer, std::span<const int> experts, std::vector<const uint8_t*>& out);
  void release();

  const StreamStats& stats() const { return stats_; }
  void reset_stats();
  size_t record_bytes() const { return record_bytes_; }
  size_t cache_slots() const { return cache_slots_; }
  size_t total_slots() const { return slots_.size(); }
  const ExpertReader& reader() const { return *reader_; }
  const StreamOptions& options() const { return opts_; }

 private:
  struct Slot {
    uint64_t key = 0;
    bool occupied = false;
    uint8_t* data = nullptr;
    int pins = 0;
    bool read_in_flight = false;  // op submitted, completion not yet observed
    bool prefetched = false;      // brought by a prefetch and not yet used
    uint8_t prefetch_kinds = 0;   // bit k: PrefetchKind k asked for it
    ReadOp op;
  };

  Slot* find(uint64_t key);
  // A free slot, evicting if needed; nullptr if every slot is pinned or in flight.
  Slot* take_slot();
  void drop(Slot& s);  // forget the key (slot becomes free)
  // Gives a free slot to (layer, expert) and prepares its read (the caller submits it).
  void claim(Slot& s, int layer, int expert);
  bool in_flight(Slot& s);
  bool is_hot(int layer, int expert) const;
  void count_use(int layer, int expert);
  void wait_for(Slot& s, int layer);

  StreamOptions opts_;
  size_t record_bytes_;
  size_t cache_slots_;
  std::unique_ptr<ExpertReader> reader_;
  AlignedBuffer arena_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::unordered_map<uint64_t, Slot*> index_;
  std::unique_ptr<EvictionPolicy> policy_;
  std::vector<Slot*> pinned_;
  // Last prediction per layer and kind, scored at the layer's next acquire.
  std::vector<std::array<std::vector<int>, 2>> predicted_;
  std::vector<std::vector<uint32_t>> use_counts_;  // [layer][expert], for the hot set
  std::vector<uint32_t> hot_threshold_;            // per layer: use count to be hot
  uint64_t acquires_ = 0;
  StreamStats stats_;
};

}  // namespace moeflux
