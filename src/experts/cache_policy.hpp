// Eviction policies of the expert cache. Keys identify an expert of a layer
// (expert_key(layer, expert)); the cache tells the policy what it inserts, hits and erases, and
// asks for a victim among the entries it may evict right now.
//
//   lru  : least recently used (the baseline).
//   slru : segmented LRU — new entries enter a probation segment; a hit promotes to a protected
//          segment (80% of capacity) whose overflow demotes back to probation; victims come from
//          probation first. Frequency-aware: an expert used once cannot push out ones used often.
//   lfu  : least frequently used with ageing — counts halve every `capacity` insertions so that
//          old popularity fades; ties broken by recency.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace moeflux {

inline uint64_t expert_key(int layer, int expert) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(layer)) << 32) | static_cast<uint32_t>(expert);
}
inline int key_layer(uint64_t key) { return static_cast<int>(key >> 32); }
inline int key_expert(uint64_t key) { return static_cast<int>(key & 0xffffffffu); }

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual void on_insert(uint64_t key) = 0;  // key is new to the cache
  virtual void on_hit(uint64_t key) = 0;     // key was used again
  virtual void on_erase(uint64_t key) = 0;   // key left the cache (evicted or dropped)
  // Picks the entry to evict among those for which can_evict(key) is true; false if none.
  // Does not erase it (the cache calls on_erase).
  virtual bool victim(const std::function<bool(uint64_t)>& can_evict, uint64_t* key) = 0;
  virtual const char* name() const = 0;
};

// name: "lru", "slru" or "lfu"; capacity in entries (sizes segments / ageing). Throws
// moeflux::Error naming the accepted names.
std::unique_ptr<EvictionPolicy> make_eviction_policy(const std::string& name, size_t capacity);

}  // namespace moeflux
