// The expert path of docs/DESIGN.md, host side: a hierarchy of expert caches over the storage
// (page cache / NVMe), prefetch, and the counters that explain where every byte came from.
//
// Tiers, fastest first: [upper tiers, e.g. GPU slots] <- RAM cache <- page cache <- device.
// Each cache tier (CacheTier) has its own byte budget, eviction policy and working slots.
// Storage reads land in the RAM tier (the last one); a record used by compute is promoted —
// copied into every faster tier that keeps records, and always into the fastest (the compute
// tier), where it stays pinned until release(). Tiers are neither inclusive nor exclusive:
// records are read-only, so evicting a copy from one tier never touches the others.
// Prefetch reads into the RAM tier. A predicted record already in the RAM tier is promoted into
// the fastest tier ahead of use (prefetch copies), once that kind of prediction has proven
// accurate enough (kMinCopyAccuracy); otherwise promotion happens when compute asks.
//
// Per-record readiness: request() pins a set of records and starts every miss at once;
// take_ready() hands records out as they become usable (cache hits at once, misses as their
// reads land), so compute can start on the first expert while others are still arriving, and a
// second request() issued before the first set is consumed overlaps its reads with that
// compute (prompt evaluation). At most two requests are outstanding.
//
// Promotion copies into a device tier are asynchronous: a handed-out record carries its copy's
// readiness (ExpertHandle::ready), which the backend's compute waits for on the device.
// release() does not wait for the copies: their sources stay pinned until the copy window they
// belong to has landed (polled by the next request; waited for only when the RAM tier has no
// other slot to give). Into a host-accessible tier the CPU computes from directly, records are
// handed out complete (take_ready fences).
//
// Host compute (hybrid CPU/GPU): request() may ask for some records to be handed out where they
// are in the RAM tier (ExpertHandle::on_host) instead of being promoted, for the CPU to compute
// them while the device computes the others.
//
// Reads in place: request() may also ask for records to be handed to the device where they lie
// in a slower tier the device can read (ExpertHandle::in_place: the GPU's kernels read the
// page-locked RAM tier across the bus, at the copy engine's rate, without the copy and its
// wait). Such a record is promoted instead when the fastest tier would admit it: a free slot,
// or a victim used fewer times than it (the fastest tier fills with what is used most, and a
// record used once does not push out one used often). Its slot stays pinned until the compute
// issued before release() has finished (TierMemory::close_reads).
//
// Single-threaded use: one thread at a time calls prefetch / request / take_ready / release
// (the Engine serialises forward passes); reads complete on the reader's threads and only touch
// their ReadOp. After warm-up no call allocates (scratch vectors keep their capacity).
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "experts/cache_tier.hpp"
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

// A cache tier above the RAM cache (the CUDA backend's GPU slots; tests use host tiers).
struct TierSpec {
  std::string name;         // for reports: "gpu", ...
  size_t budget_bytes = 0;  // records kept for reuse, besides the working slots
  std::string policy = "lfu";
  // Allocates the tier's slots; empty = host memory. Every tier but the fastest must be
  // host-accessible (promotions copy from it).
  std::function<std::unique_ptr<TierMemory>(size_t slots, size_t record_bytes)> make_memory;
};

inline constexpr size_t kMaxCacheTiers = 4;  // upper tiers + the RAM tier

struct StreamOptions {
  std::vector<TierSpec> upper_tiers;  // above the RAM cache, fastest first
  size_t ram_cache_bytes = 0;         // --ram-cache
  std::string policy = "lfu";  // --cache-policy (default chosen by measurement, docs/PERF.md)
  PrefetchMode prefetch = PrefetchMode::None;
  // Of each prediction (guesses best first: router order), the first this many that are in the
  // RAM tier are copied into the fastest tier ahead of use, once the prediction kind's accuracy
  // has earned it (--prefetch-copies); 0: prefetch stops at the RAM tier.
  size_t prefetch_copies = 0;
  // A prediction kind's copies start once this many of its predictions have been scored, at
  // least ExpertStreamer::kMinCopyAccuracy of them used: below that, copying the guesses would
  // spend more copy bandwidth on misses than it saves.
  uint64_t prefetch_copy_after = 128;
  ReaderOptions io;
  // Copies into the fastest tier admitted as reads in place are: a record the tier would not
  // admit — it is full of records kept for reuse and its eviction victim has been used as often
  // or more — is copied into a working slot for its use and dropped after, displacing nothing.
  // The tier then keeps at most its budget. The engine turns it on wherever a GPU tier copies
  // its misses in (docs/PERF.md, 2026-12-06); off, every copy is kept (evicting a victim).
  bool admit_copies = false;
  int max_active = 8;        // experts per token (K); sizes the working slots
  size_t hot_per_layer = 0;  // --hot N: keep each layer's N most used experts resident
  // Allocates the RAM tier's slots (page-locked memory for a GPU backend); empty = ordinary
  // host memory.
  std::function<std::unique_ptr<TierMemory>(size_t slots, size_t record_bytes)> ram_memory;
  // Tests: builds the reader instead of make_expert_reader (e.g. a fault-injecting one).
  std::function<std::unique_ptr<ExpertReader>(const Package&, const ReaderOptions&)> reader_factory;
};

struct LayerStreamStats {
  uint64_t requests = 0;  // expert records asked for by compute
  // Found in cache tier t (fastest first; the last is the RAM tier), not brought by prefetch.
  std::array<uint64_t, kMaxCacheTiers> tier_hits{};
  uint64_t prefetch_hits = 0;  // brought (or being brought) by a prefetch
  uint64_t misses = 0;         // read on demand
  uint64_t host_computed = 0;  // handed out in the RAM tier for the CPU (not promoted)
  uint64_t read_in_place = 0;  // handed to the device in a slower tier (not promoted)
  double io_wait_seconds = 0;  // compute blocked on reads

  uint64_t cache_hits() const;  // sum of tier_hits
};

struct PrefetchStats {
  uint64_t predictions = 0;    // experts predicted
  uint64_t correct = 0;        // predicted experts that the next request of that layer used
  uint64_t reads = 0;          // records read because of a prediction
  uint64_t wasted_reads = 0;   // of those, not used by the next request of that layer
  uint64_t copies = 0;         // records copied into the fastest tier because of a prediction
  uint64_t wasted_copies = 0;  // of those, not used by the next request of that layer
};

struct StreamStats {
  std::vector<LayerStreamStats> layers;
  std::array<PrefetchStats, 2> prefetch;  // by PrefetchKind
  std::vector<TierStats> tiers;           // fastest first, as the streamer's tiers
  uint64_t storage_reads = 0;             // records read from the layer files (demand + prefetch)

  LayerStreamStats total() const;
};

// A record handed out by take_ready: experts[index] of its request.
struct ExpertHandle {
  size_t index = 0;
  int expert = 0;
  const uint8_t* record = nullptr;  // in the fastest tier's memory (a slower tier's: see below)
  const void* ready = nullptr;      // readiness event of an asynchronous copy; null = usable now
  bool on_host = false;             // left in the RAM tier for the CPU, as request() was asked
  bool in_place = false;            // left in a slower tier the device reads (Placement::InPlace)
};

// How request() is to hand out a record found in (or read into) a slower tier than the
// fastest.
enum class Placement : uint8_t {
  Promote,  // copied into the fastest tier (the compute tier)
  Host,     // left in the RAM tier, for the CPU to compute
  InPlace,  // left where the device can read it, unless the fastest tier admits it
};

class ExpertStreamer {
 public:
  ExpertStreamer(const Package& pkg, const StreamOptions& opts);
  ~ExpertStreamer();
  ExpertStreamer(const ExpertStreamer&) = delete;
  ExpertStreamer& operator=(const ExpertStreamer&) = delete;

  // Starts reading `experts` of `layer` that are not already present (fire and forget).
  // Skipped for experts no slot can be freed for. Those already in the RAM tier are copied into
  // the fastest tier (prefetch copies, see StreamOptions::prefetch_copies): at once, or, when
  // called from request() (a deferred prefetch), by that ticket's release() — behind the
  // ticket's own copies, which the compute of this layer waits for.
  void prefetch(int layer, std::span<const int> experts, PrefetchKind kind);
  // The share of a kind's scored predictions that must have been used for its copies to run
  // (StreamOptions::prefetch_copy_after).
  static constexpr double kMinCopyAccuracy = 0.5;
  // The same, issued by the next acquire() right after it has submitted its own misses: the
  // reader serves requests in order, so a guess about the next layer never delays the reads
  // this layer is about to wait for, and it runs while those finish and while compute runs.
  void prefetch_after_next_demand(int layer, std::span<const int> experts, PrefetchKind kind);
  // Forgets deferred prefetches not issued yet (the evaluation they belonged to was abandoned).
  void cancel_deferred_prefetches() {
    n_deferred_ = 0;
    copy_queue_.clear();
  }

  // Pins the records of `experts` of `layer` (found in a tier, or read into the RAM tier: every
  // miss submitted at once) and returns a ticket for take_ready / release. Waits for nothing.
  // At most two tickets may be outstanding; together they pin at most 2 * max_active records.
  // placement (empty: Promote for all; else one per expert): a record to leave on the host
  // (Host) that is in the RAM tier when handed out stays there (ExpertHandle::on_host); one to
  // read in place (InPlace) that lies in a device-readable slower tier stays there unless the
  // fastest tier admits it (ExpertHandle::in_place); any other is promoted.
  int request(int layer, std::span<const int> experts, std::span<const Placement> placement = {});
  // Whether some slower tier can be read in place by the device (Placement::InPlace can apply).
  bool reads_in_place() const { return reads_in_place_; }
  // StreamOptions::admit_copies, decided after construction (the engine decides it with the
  // way the GPU reads the RAM tier). Before the first request.
  void set_admit_copies(bool on) {
    MF_ASSERT(next_ticket_ == 0);
    opts_.admit_copies = on;
  }
  // Says that the device work reading `ticket`'s records in place (handed out so far) has all
  // been issued: the time it takes is measured up to here (TierStats::read_*), not to
  // release() after what the host issues meanwhile (the CPU's share of a hybrid layer).
  // Optional; release() does it otherwise.
  void reads_issued(int ticket) { close_in_place_reads(ticket); }
  // The fastest tier holding (layer, expert) now (0 = the compute tier, ram_tier() = RAM), or
  // -1 when none does (a read in flight into the RAM tier counts as there).
  int tier_of(int layer, int expert);
  // Hands out (appends to `ready`, cleared first) every record of `ticket` not handed out yet
  // that is usable now, promoted into the fastest tier; if none is, first waits for the next
  // read of the ticket to land. Returns false, with `ready` empty, once all were handed out.
  // Throws moeflux::Error if a read fails; the streamer stays usable (every outstanding ticket
  // is dropped: failed records forgotten, pins released).
  bool take_ready(int ticket, std::vector<ExpertHandle>& ready);
  // Unpins the records of `ticket` (they stay cached as the tiers' budgets allow); records that
  // are sources of copies still in flight stay pinned until those land. Does not wait.
  void release(int ticket);

  // request + take_ready until done, copies fenced: out[i] points at the whole record of
  // experts[i]; release() ends the pin. For tools and tests that want a whole set at once.
  void acquire(int layer, std::span<const int> experts, std::vector<const uint8_t*>& out);
  void release();  // every outstanding ticket

  const StreamStats& stats() const { return stats_; }
  void reset_stats();
  size_t record_bytes() const { return record_bytes_; }
  size_t tier_count() const { return tiers_.size(); }
  const CacheTier& tier(size_t i) const { return *tiers_[i]; }
  size_t ram_tier() const { return tiers_.size() - 1; }  // where storage reads land
  const ExpertReader& reader() const { return *reader_; }
  const StreamOptions& options() const { return opts_; }

 private:
  struct Pin {
    size_t tier;
    TierSlot* slot;
    int ticket;
    uint64_t window;  // draining_: the fastest tier's copy window it is a source of
  };
  // One requested record of an outstanding ticket.
  struct Entry {
    int ticket = 0;
    int layer = 0, expert = 0;
    size_t index = 0;  // in its request
    size_t tier = 0;   // where it was found (the RAM tier for misses)
    TierSlot* slot = nullptr;
    bool demand_read = false;  // this request submitted the read (a failure is final)
    Placement placement = Placement::Promote;  // as request() was asked
    bool in_place = false;                     // handed out in place (pinned until read)
    bool reads_closed = false;  // in place, and a close_reads window covers its compute
    uint64_t reads_window = 0;  // that window (0: compute was complete)
    bool taken = false;
  };

  // The fastest tier holding `key` (its slot in *slot), or -1.
  int locate(uint64_t key, TierSlot** slot);
  // A free RAM-tier slot, evicting if needed and, if every slot is pinned or loading, waiting
  // for a read in flight to land.
  TierSlot* take_ram_slot();
  // Gives a free RAM-tier slot to (layer, expert) and prepares its read (the caller submits).
  void claim_read(TierSlot& s, int layer, int expert);
  // Takes a slot of tier t (evicting as the tier's policy says) and copies `src` into it as
  // `key`, counting the copy; *ready as TierMemory::copy_in. nullptr when every slot is pinned.
  TierSlot* copy_into(size_t t, uint64_t key, const TierSlot& src, const void** ready,
                      bool transient = false);
  // Copies the record in `src` (tier src_tier) into the faster tiers; returns the fastest copy
  // and, in *ready, the readiness of the copy into it (null: complete).
  // `transient`: into the fastest tier as TierSlot::transient (StreamOptions::admit_copies).
  TierSlot* promote(uint64_t key, TierSlot& src, size_t src_tier, const void** ready,
                    bool transient = false);
  void score_predictions(int layer, std::span<const int> experts);
  bool is_hot(int layer, int expert) const;
  void count_use(int layer, int expert);
  void wait_for(TierSlot& s, int layer);
  // A record evicted before any request used it: its prefetch reads (or copies) were wasted,
  // counted in PrefetchStats::*wasted of every kind that asked for it.
  void count_wasted_prefetch(const TierSlot& s, uint64_t PrefetchStats::*wasted);
  void unpin(const Pin& p);
  // Waits for every promotion copy issued so far (TierMemory::copy_in may be asynchronous),
  // counts what the copies took (TierStats::transfer_*) and unpins every draining source.
  void fence_upper_tiers();
  // Unpins the draining sources whose copy windows have landed. Does not wait.
  void unpin_landed_sources();
  // Moves what the tiers' memories measured of landed copies into TierStats.
  void count_transferred();
  // When an entry of `ticket` (any outstanding one: -1) handed out in place has no window
  // covering its compute yet: closes one that lands once the compute issued so far has
  // finished (TierMemory::close_reads, timing the reads since open_reads). Returns the latest
  // such window of the ticket's entries (0: none, or compute complete).
  uint64_t close_in_place_reads(int ticket);
  // Whether the fastest tier admits `key` of a record that could be read in place (or, with
  // admit_copies, be copied in for one use) instead: it has room — a free slot, or with
  // admit_copies fewer kept records than its budget — or its eviction victim has been used
  // fewer times.
  bool top_admits(uint64_t key);
  // Whether predictions of kind k are accurate enough to copy into the fastest tier.
  bool copies_earned(int k) const;
  // Copies the records in copy_queue_ that are still in a slower tier (and not loading) into
  // the fastest tier, in one window of their own; their sources drain like release()'s.
  void issue_prefetch_copies();
  // Hands out entry e: checks its read, retries a failed prefetch read once, promotes it.
  // Returns false if its read is still in flight.
  bool try_take(Entry& e, std::vector<ExpertHandle>& ready);
  // After a failure: waits out every outstanding read, drops failed records, unpins all.
  void abandon_all();

  StreamOptions opts_;
  size_t record_bytes_;
  std::unique_ptr<ExpertReader> reader_;
  std::vector<std::unique_ptr<CacheTier>> tiers_;  // fastest first; back() is the RAM tier
  std::function<bool(uint64_t)> spare_hot_;
  std::function<bool(uint64_t)> spare_top_;  // the fastest tier: hot, or prefetched unused
  std::function<void(TierSlot&)> evicted_from_top_;
  std::function<void(TierSlot&)> evicted_from_ram_;
  std::vector<Pin> pinned_;
  // Released records that are sources of copies into the fastest tier not known to have landed:
  // pinned (not reusable) until their window lands.
  std::vector<Pin> draining_;
  // The fastest tier's last copy window closed by take_ready, and its ticket: release() hands
  // it to the ticket's copy sources (windows land in order: the last one covers the earlier).
  int window_ticket_ = -1;
  uint64_t ticket_window_ = 0;
  std::vector<Entry> entries_;          // of the outstanding tickets
  std::vector<ReadOp*> reads_;          // scratch: reads to submit
  std::vector<ExpertHandle> handles_;   // scratch of acquire()
  std::vector<uint32_t> rank_scratch_;  // scratch of the hot-set ranking
  int next_ticket_ = 0;
  struct DeferredPrefetch {
    int layer = -1;
    std::vector<int> experts;
    PrefetchKind kind = PrefetchKind::Lookahead;
  };
  // deferred_[0, n_deferred_) are issued by the next request (entries are reused).
  std::vector<DeferredPrefetch> deferred_;
  size_t n_deferred_ = 0;
  // Prefetch copies waiting for the current ticket's release(): (key, kind).
  std::vector<std::pair<uint64_t, int>> copy_queue_;
  bool in_request_ = false;      // prefetch() called by request(): its copies wait (copy_queue_)
  bool reads_in_place_ = false;  // a slower tier is device-readable, the fastest is not host
  size_t reads_open_ = 0;  // records handed out in place since the fastest tier's open_reads()
  // Per kind, over the streamer's life (not reset with the stats): predictions scored, used.
  std::array<uint64_t, 2> scored_{}, scored_correct_{};
  // Last prediction per layer and kind, scored at the layer's next acquire.
  std::vector<std::array<std::vector<int>, 2>> predicted_;
  std::vector<std::vector<uint32_t>> use_counts_;  // [layer][expert], for the hot set
  std::vector<uint32_t> hot_threshold_;            // per layer: use count to be hot
  uint64_t acquires_ = 0;
  StreamStats stats_;
};

}  // namespace moeflux
