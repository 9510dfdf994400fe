// Position checkpoints of one sequence: what a Session needs to go back to an earlier position
// without evaluating the sequence again from the start.
//
// A KV cache can be cut at any position (attention reads positions [0, pos) only), but the
// recurrent (Gated DeltaNet) state at an earlier position cannot be recovered from the state at
// a later one. A checkpoint keeps, for one position p, every recurrent layer's state (conv
// window and S) as it was after evaluating positions [0, p), and the logits of position p - 1.
//
// Invariant (kept by Session): every checkpoint's position is at most the session's position,
// and the tokens before it are the ones evaluated when it was taken. Cutting the sequence drops
// the checkpoints past the cut; clearing or loading a state drops them all.
//
// Memory: the store holds at most `budget` bytes of checkpoints; taking one past the budget
// evicts the least recently used (taken or restored) first. A budget smaller than one
// checkpoint keeps none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace moeflux {

struct Checkpoint {
  int position = 0;
  std::vector<float> recurrent;  // the recurrent layers' states, in layer order
  std::vector<float> logits;     // [vocab]: logits of position `position - 1`
  uint64_t last_use = 0;         // LRU clock
  size_t bytes() const { return (recurrent.size() + logits.size()) * sizeof(float); }
};

struct CheckpointStats {
  size_t count = 0;              // checkpoints held
  size_t bytes = 0;              // their memory
  uint64_t taken = 0;            // checkpoints stored since the session was created
  uint64_t evicted = 0;          // dropped to stay within the budget
  uint64_t restored = 0;         // cuts that resumed from a checkpoint
  uint64_t replayed_tokens = 0;  // tokens evaluated again after a restore
};

class CheckpointStore {
 public:
  explicit CheckpointStore(size_t budget_bytes) : budget_(budget_bytes) {}

  size_t budget() const { return budget_; }
  void set_budget(size_t bytes);  // evicts down to the new budget

  // A slot for position `pos` to fill (replacing a checkpoint at the same position), or null
  // when one of `bytes` would not fit in the budget at all. The caller fills recurrent and
  // logits, then calls commit(). Evicts least recently used checkpoints to make room.
  Checkpoint* begin(int pos, size_t bytes);
  void commit(Checkpoint* c);

  // The checkpoint with the greatest position <= pos (marked used), or null.
  const Checkpoint* latest_at_or_before(int pos);
  // Drops every checkpoint past `pos` (positions > pos).
  void drop_after(int pos);
  void clear();

  CheckpointStats stats() const;
  void count_restore(size_t replayed) {
    ++stats_.restored;
    stats_.replayed_tokens += replayed;
  }

 private:
  void evict_to(size_t budget);
  size_t budget_;
  uint64_t clock_ = 0;
  std::vector<Checkpoint> items_;
  CheckpointStats stats_;
};

}  // namespace moeflux
