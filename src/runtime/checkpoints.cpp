#include "runtime/checkpoints.hpp"

#include <algorithm>

namespace moeflux {

void CheckpointStore::set_budget(size_t bytes) {
  budget_ = bytes;
  evict_to(budget_);
}

void CheckpointStore::evict_to(size_t budget) {
  size_t held = 0;
  for (const Checkpoint& c : items_) held += c.bytes();
  while (held > budget && !items_.empty()) {
    auto lru = std::min_element(items_.begin(), items_.end(), [](const auto& a, const auto& b) {
      return a.last_use < b.last_use;
    });
    held -= lru->bytes();
    items_.erase(lru);
    ++stats_.evicted;
  }
}

Checkpoint* CheckpointStore::begin(int pos, size_t bytes) {
  std::erase_if(items_, [&](const Checkpoint& c) { return c.position == pos; });
  if (bytes > budget_) return nullptr;
  evict_to(budget_ - bytes);
  Checkpoint& c = items_.emplace_back();
  c.position = pos;
  return &c;
}

void CheckpointStore::commit(Checkpoint* c) {
  c->last_use = ++clock_;
  ++stats_.taken;
}

const Checkpoint* CheckpointStore::latest_at_or_before(int pos) {
  Checkpoint* best = nullptr;
  for (Checkpoint& c : items_)
    if (c.position <= pos && (!best || c.position > best->position)) best = &c;
  if (best) best->last_use = ++clock_;
  return best;
}

void CheckpointStore::drop_after(int pos) {
  std::erase_if(items_, [&](const Checkpoint& c) { return c.position > pos; });
}

void CheckpointStore::clear() {
  items_.clear();
}

CheckpointStats CheckpointStore::stats() const {
  CheckpointStats s = stats_;
  s.count = items_.size();
  s.bytes = 0;
  for (const Checkpoint& c : items_) s.bytes += c.bytes();
  return s;
}

}  // namespace moeflux
