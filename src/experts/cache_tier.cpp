#include "experts/cache_tier.hpp"

#include "core/error.hpp"

namespace moeflux {

CacheTier::CacheTier(std::string name, size_t budget_slots, size_t working_slots,
                     std::unique_ptr<TierMemory> memory, const std::string& policy,
                     TierStats& stats)
    : stats(stats),
      name_(std::move(name)),
      budget_slots_(budget_slots),
      memory_(std::move(memory)) {
  const size_t n = budget_slots + working_slots;
  MF_ASSERT(working_slots > 0 && memory_ != nullptr);
  slots_.reserve(n);
  free_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    auto s = std::make_unique<TierSlot>();
    s->data = memory_->slot_data(i);
    MF_ASSERT(reinterpret_cast<uintptr_t>(s->data) % 4096 == 0);
    slots_.push_back(std::move(s));
  }
  for (size_t i = n; i-- > 0;) free_.push_back(slots_[i].get());  // slot 0 first
  index_.reserve(n * 2);
  policy_ = make_eviction_policy(policy, n);
}

TierSlot* CacheTier::find(uint64_t key) {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : it->second;
}

bool CacheTier::loading(TierSlot& s) {
  if (s.read_in_flight && done(s.op)) s.read_in_flight = false;
  return s.read_in_flight;
}

TierSlot* CacheTier::take_free(const std::function<bool(uint64_t)>& spared,
                               const std::function<void(TierSlot&)>& on_evict) {
  if (free_.empty() && !evict(spared, on_evict)) return nullptr;
  TierSlot* s = free_.back();  // (after evict(): the victim's slot)
  free_.pop_back();
  return s;
}

bool CacheTier::evict(const std::function<bool(uint64_t)>& spared,
                      const std::function<void(TierSlot&)>& on_evict) {
  uint64_t key = 0;
  if (!peek_victim(spared, &key)) return false;
  TierSlot* s = index_.at(key);
  if (on_evict) on_evict(*s);
  ++stats.evictions;
  drop(*s);  // pushes s onto the free list
  return true;
}

bool CacheTier::peek_victim(const std::function<bool(uint64_t)>& spared, uint64_t* key) {
  // Spared records go last: a victim among the others first, then among all.
  auto evictable = [&](uint64_t k, bool spare) {
    TierSlot* s = index_.at(k);
    return s->pins == 0 && !loading(*s) && !(spare && spared && spared(k));
  };
  return policy_->victim([&](uint64_t k) { return evictable(k, true); }, key) ||
         policy_->victim([&](uint64_t k) { return evictable(k, false); }, key);
}

void CacheTier::insert(TierSlot& s, uint64_t key, bool transient) {
  MF_ASSERT(!s.occupied && s.pins == 0);
  s.key = key;
  s.occupied = true;
  s.transient = transient;
  transient_ += transient ? 1 : 0;
  s.prefetched = false;
  s.prefetch_kinds = 0;
  s.copy_ready = nullptr;
  index_[key] = &s;
  policy_->on_insert(key);
  ++stats.fills;
}

void CacheTier::drop(TierSlot& s) {
  MF_ASSERT(s.occupied && s.pins == 0 && !s.read_in_flight);
  index_.erase(s.key);
  policy_->on_erase(s.key);
  transient_ -= s.transient ? 1 : 0;
  s.transient = false;
  s.occupied = false;
  s.prefetched = false;
  s.prefetch_kinds = 0;
  s.copy_ready = nullptr;
  free_.push_back(&s);
}

}  // namespace moeflux
