// One tier of the expert cache: a TierMemory of `budget + working` record slots, an index from
// expert_key to slot, and an eviction policy over the occupied slots.
//
// Budget slots hold records kept for reuse; the working slots (3K: the records one acquire
// pins, plus reads in flight) exist so that a tier with a zero budget still streams. A tier
// "keeps" records only with a non-zero budget; otherwise the streamer drops a record as soon as
// it is unpinned.
//
// Invariants: a key is in the index iff its slot is occupied; an occupied slot is evicted only
// when unpinned and not loading (a storage read into it still in flight); free slots are found
// in O(1) from a free list.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "experts/cache_policy.hpp"
#include "experts/expert_reader.hpp"
#include "experts/tier_memory.hpp"

namespace moeflux {

struct TierSlot {
  uint64_t key = 0;
  bool occupied = false;
  uint8_t* data = nullptr;
  int pins = 0;
  bool read_in_flight = false;  // storage read submitted, completion not yet observed
  bool prefetched = false;      // brought by a prefetch and not yet used
  uint8_t prefetch_kinds = 0;   // bit k: PrefetchKind k asked for it
  // The readiness of an asynchronous copy into it that no compute has waited for yet (a
  // prefetch promoted the record into a device tier): the first use waits for it.
  const void* copy_ready = nullptr;
  // Copied in for one use without being admitted (StreamOptions::admit_copies): dropped once
  // unpinned, never kept (CacheTier::kept does not count it).
  bool transient = false;
  ReadOp op;  // the storage read that fills it (the RAM tier only)
};

struct TierStats {
  uint64_t hits = 0;          // requests served from this tier (prefetched records included)
  uint64_t fills = 0;         // records that entered it (storage reads or promotions)
  uint64_t evictions = 0;     // records pushed out to make room
  double copy_seconds = 0;    // host time spent issuing (or doing) promotion copies (upper tiers)
  uint64_t copied_bytes = 0;  // bytes promoted in (upper tiers)
  // Of those, the copies timed where they ran (device tiers; 0 else), once they have landed:
  // their bytes and time (copy windows, TierMemory::take_transferred).
  double transfer_bytes = 0;
  double transfer_seconds = 0;
  // The fastest tier: compute that read slower tiers in place, timed where it ran from its
  // first such record's hand-out to its end (with whatever else that compute did: the GPU's
  // hits alongside), once landed: the bytes it read in place and that time.
  double read_bytes = 0;
  double read_seconds = 0;
};

class CacheTier {
 public:
  // `stats` is where this tier counts (owned by the caller, outliving the tier).
  CacheTier(std::string name, size_t budget_slots, size_t working_slots,
            std::unique_ptr<TierMemory> memory, const std::string& policy, TierStats& stats);
  CacheTier(const CacheTier&) = delete;
  CacheTier& operator=(const CacheTier&) = delete;

  const std::string& name() const { return name_; }
  size_t budget_slots() const { return budget_slots_; }
  size_t total_slots() const { return slots_.size(); }
  bool keeps_records() const { return budget_slots_ > 0; }
  TierMemory& memory() { return *memory_; }
  const TierMemory& memory() const { return *memory_; }
  const std::vector<std::unique_ptr<TierSlot>>& slots() const { return slots_; }

  TierSlot* find(uint64_t key);
  // True while a storage read into `s` is in flight (observes completion with acquire order).
  bool loading(TierSlot& s);
  // A free slot; if there is none, evicts the policy's victim among the slots that are
  // unpinned, not loading and not spared (retrying without sparing if that finds none).
  // `on_evict` sees the victim before it is dropped. nullptr if every slot is pinned/loading.
  TierSlot* take_free(const std::function<bool(uint64_t)>& spared,
                      const std::function<void(TierSlot&)>& on_evict);
  // Evicts the record take_free() would (free slots or not); false if every occupied slot is
  // pinned or loading.
  bool evict(const std::function<bool(uint64_t)>& spared,
             const std::function<void(TierSlot&)>& on_evict);
  bool has_free() const { return !free_.empty(); }
  // Occupied slots that hold records kept for reuse (transient ones excepted).
  size_t kept() const { return index_.size() - transient_; }
  // The record take_free() would evict now (when no slot is free), without evicting it;
  // false if every occupied slot is pinned or loading.
  bool peek_victim(const std::function<bool(uint64_t)>& spared, uint64_t* key);
  // s must come from take_free(); `transient`: see TierSlot::transient.
  void insert(TierSlot& s, uint64_t key, bool transient = false);
  void touch(uint64_t key) { policy_->on_hit(key); }
  void drop(TierSlot& s);  // forget s's record; s becomes free

  TierStats& stats;

 private:
  std::string name_;
  size_t budget_slots_;
  std::unique_ptr<TierMemory> memory_;
  std::vector<std::unique_ptr<TierSlot>> slots_;
  std::vector<TierSlot*> free_;
  std::unordered_map<uint64_t, TierSlot*> index_;
  size_t transient_ = 0;  // occupied slots with TierSlot::transient
  std::unique_ptr<EvictionPolicy> policy_;
};

}  // namespace moeflux
