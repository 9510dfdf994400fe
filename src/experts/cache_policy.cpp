#include "experts/cache_policy.hpp"

#include <list>
#include <map>
#include <unordered_map>

#include "core/error.hpp"

namespace moeflux {

namespace {

// An LRU list with O(1) touch/erase; front = most recent.
class RecencyList {
 public:
  void push_front(uint64_t k) { pos_[k] = list_.insert(list_.begin(), k); }
  void erase(uint64_t k) {
    auto it = pos_.find(k);
    if (it == pos_.end()) return;
    list_.erase(it->second);
    pos_.erase(it);
  }
  void touch(uint64_t k) {
    erase(k);
    push_front(k);
  }
  bool contains(uint64_t k) const { return pos_.count(k) != 0; }
  size_t size() const { return list_.size(); }
  // Oldest first.
  bool oldest_matching(const std::function<bool(uint64_t)>& ok, uint64_t* k) const {
    for (auto it = list_.rbegin(); it != list_.rend(); ++it)
      if (ok(*it)) {
        *k = *it;
        return true;
      }
    return false;
  }
  uint64_t oldest() const { return list_.back(); }

 private:
  std::list<uint64_t> list_;
  std::unordered_map<uint64_t, std::list<uint64_t>::iterator> pos_;
};

class LruPolicy final : public EvictionPolicy {
 public:
  void on_insert(uint64_t k) override { l_.push_front(k); }
  void on_hit(uint64_t k) override { l_.touch(k); }
  void on_erase(uint64_t k) override { l_.erase(k); }
  bool victim(const std::function<bool(uint64_t)>& ok, uint64_t* k) override {
    return l_.oldest_matching(ok, k);
  }
  const char* name() const override { return "lru"; }

 private:
  RecencyList l_;
};

class SlruPolicy final : public EvictionPolicy {
 public:
  explicit SlruPolicy(size_t capacity) : protected_cap_(std::max<size_t>(1, capacity * 4 / 5)) {}
  void on_insert(uint64_t k) override { probation_.push_front(k); }
  void on_hit(uint64_t k) override {
    if (protected_.contains(k)) {
      protected_.touch(k);
      return;
    }
    probation_.erase(k);
    protected_.push_front(k);
    if (protected_.size() > protected_cap_) {  // demote the oldest protected entry
      const uint64_t d = protected_.oldest();
      protected_.erase(d);
      probation_.push_front(d);
    }
  }
  void on_erase(uint64_t k) override {
    probation_.erase(k);
    protected_.erase(k);
  }
  bool victim(const std::function<bool(uint64_t)>& ok, uint64_t* k) override {
    return probation_.oldest_matching(ok, k) || protected_.oldest_matching(ok, k);
  }
  const char* name() const override { return "slru"; }

 private:
  size_t protected_cap_;
  RecencyList probation_, protected_;
};

class LfuPolicy final : public EvictionPolicy {
 public:
  explicit LfuPolicy(size_t capacity) : age_period_(std::max<size_t>(1, capacity)) {}
  void on_insert(uint64_t k) override {
    set(k, remembered(k) + 1);
    if (++inserts_ % age_period_ == 0) age();
  }
  void on_hit(uint64_t k) override { set(k, entries_.at(k).count + 1); }
  void on_erase(uint64_t k) override {
    auto it = entries_.find(k);
    if (it == entries_.end()) return;
    history_[k] = it->second.count;  // keep the count, so a returning expert keeps its history
    order_.erase(it->second.pos);
    entries_.erase(it);
  }
  bool victim(const std::function<bool(uint64_t)>& ok, uint64_t* k) override {
    for (const auto& [rank, key] : order_)  // lowest count, then oldest
      if (ok(key)) {
        *k = key;
        return true;
      }
    return false;
  }
  const char* name() const override { return "lfu"; }

 private:
  struct Rank {
    uint64_t count, stamp;
    bool operator<(const Rank& o) const {
      return count != o.count ? count < o.count : stamp < o.stamp;
    }
  };
  struct Entry {
    uint64_t count;
    std::multimap<Rank, uint64_t>::iterator pos;
  };
  uint64_t remembered(uint64_t k) const {
    auto it = history_.find(k);
    return it == history_.end() ? 0 : it->second;
  }
  void set(uint64_t k, uint64_t count) {
    auto it = entries_.find(k);
    if (it != entries_.end()) {  // re-rank in place: no allocation on a hit
      auto node = order_.extract(it->second.pos);
      node.key() = Rank{count, ++clock_};
      it->second = {count, order_.insert(std::move(node))};
      return;
    }
    entries_[k] = {count, order_.emplace(Rank{count, ++clock_}, k)};
  }
  void age() {  // halve every count, resident or remembered
    std::vector<std::pair<uint64_t, uint64_t>> live;
    for (const auto& [k, e] : entries_) live.emplace_back(k, e.count / 2);
    order_.clear();
    entries_.clear();
    for (auto& [k, c] : live) set(k, c);
    for (auto it = history_.begin(); it != history_.end();)
      it = (it->second /= 2) == 0 ? history_.erase(it) : std::next(it);
  }

  size_t age_period_;
  uint64_t inserts_ = 0, clock_ = 0;
  std::unordered_map<uint64_t, Entry> entries_;
  std::unordered_map<uint64_t, uint64_t> history_;
  std::multimap<Rank, uint64_t> order_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> make_eviction_policy(const std::string& name, size_t capacity) {
  if (name == "lru") return std::make_unique<LruPolicy>();
  if (name == "slru") return std::make_unique<SlruPolicy>(capacity);
  if (name == "lfu") return std::make_unique<LfuPolicy>(capacity);
  fail("unknown cache policy '" + name + "' (expected lru, slru or lfu)");
}

}  // namespace moeflux
