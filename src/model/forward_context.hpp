// What a forward pass over one batch needs besides the weights: the config, the family, the
// backend and its preallocated workspace, the expert streamer, the rope table, the batch's
// sequences, timers and routing sinks.
//
// A batch is T rows (tokens) in one workspace. Its rows belong to one or more sequences
// (SequenceChunk): a prompt chunk is one sequence's consecutive tokens; batched decode is one
// row per sequence. Row-wise work (projections, norms, MoE) runs over all T rows at once; the
// mixers' sequence-dependent parts (KV cache, recurrent state, positions) run per chunk.
#pragma once

#include <chrono>
#include <functional>
#include <span>
#include <vector>

#include "backend/backend.hpp"
#include "experts/expert_streamer.hpp"
#include "formats/package.hpp"
#include "model/config.hpp"
#include "model/host_experts.hpp"

namespace moeflux {

struct FamilyDef;
struct Workspace;
struct MoeScratch;

// Per-layer state of one sequence: a KV cache (full attention) or a DeltaNet state (linear).
struct LayerState {
  KvCache kv;
  DeltaNetState delta;
};

// Routing decisions of one MoE layer for one token (exposed for tracing and tests).
struct RoutingRecord {
  std::vector<int> experts;
  std::vector<float> weights;
};

// One sequence's state: its layers' states, in backend memory (owned by its Session), and the
// routing of its last evaluated token per layer (empty for dense layers; temporal prefetch).
struct SequenceState {
  std::vector<LayerState> layers;
  std::vector<RoutingRecord> last_routing;
};

// Rows [row0, row0 + rows) of a batch: tokens of `state`'s sequence at positions pos0, pos0+1...
struct SequenceChunk {
  SequenceState* state = nullptr;
  int pos0 = 0;
  size_t row0 = 0, rows = 0;
};

// Wall time per layer, split as in flash-moe's --timing, summed over the tokens evaluated.
struct LayerTimes {
  double attention = 0;  // token mixer: attention or Gated DeltaNet (incl. its input norm)
  double router = 0;     // router matmul, softmax, top-k (incl. post-attention norm)
  double io_wait = 0;    // blocked on expert reads
  double experts = 0;    // routed + shared expert FFNs and the combine (excluding io_wait)
  double prefetch = 0;   // issuing predictions (lookahead router)
  double wall = 0;       // the whole layer; wall - the above = other (residual adds, copies, ...)
};

struct ForwardTimings {
  std::vector<LayerTimes> layers;
  double embed = 0, head = 0;  // embedding lookup, final norm + LM head
  double replay = 0;           // launching recorded decode steps (instead of embed and layers)
  uint64_t tokens = 0;
};

// Adds the time since construction to `slot` when timing is on (slot != nullptr).
class ScopedTimer {
 public:
  explicit ScopedTimer(double* slot) : slot_(slot) {
    if (slot_) t0_ = std::chrono::steady_clock::now();
  }
  ~ScopedTimer() {
    if (slot_)
      *slot_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  double* slot_;
  std::chrono::steady_clock::time_point t0_;
};

// Called after each MoE layer of each batch with the routing of a sequence chunk's tokens
// (positions first_pos, first_pos + 1, ...).
using RoutingSink =
    std::function<void(int layer, int first_pos, const std::vector<RoutingRecord>&)>;

// Every expert of every MoE layer in backend memory (a GPU backend with --gpu-mem all): the
// forward pass reads records from here instead of the streamer, and batches of at most
// max_indexed_rows rows, or of at least min_grouped_rows, route on the device
// (Backend::expert_ffn_indexed, which groups by expert itself from kGroupedPairsPerExpert pairs
// per expert) without waiting. min_grouped_rows is max_indexed_rows + 1 (every batch) unless
// MOEFLUX_DEVICE_ROUTING=host leaves the range below kGroupedPairsPerExpert pairs per expert to
// the host's grouping, which waits for the routing (Engine, engine.cpp).
struct ResidentExperts {
  std::vector<IndexedExperts> layers;                     // per layer (empty: dense layer)
  std::vector<std::vector<const uint8_t*>> host_records;  // the same addresses, host-readable
  size_t max_indexed_rows = 8;
  size_t min_grouped_rows = 0;  // 0: none
  size_t bytes = 0;             // backend memory they take
};

struct ForwardContext {
  const ModelConfig& config;
  const FamilyDef& family;
  const ExpertLayout& expert_layout;
  Backend& be;
  Workspace& ws;
  MoeScratch& moe;
  ExpertStreamer& streamer;
  const RopeTable& rope;
  int active_experts;  // K actually run per token (--k), <= num_experts
  size_t rows;         // T: rows of this batch
  std::span<const SequenceChunk> seqs;
  ForwardTimings* timings;                    // null unless --timing
  const RoutingSink* on_routing;              // null unless tracing
  const ResidentExperts* resident = nullptr;  // null: experts come from the streamer
  HostExperts* host_experts = nullptr;        // null: no expert is computed on the CPU
  // The GPU reads RAM-tier records in place instead of copying them in (small batches;
  // EngineOptions::gpu_reads, where the streamer can).
  bool reads_in_place = false;

  double* timer(int layer, double LayerTimes::*field) const {
    return timings ? &(timings->layers[layer].*field) : nullptr;
  }
  // Every expert resident and few rows, no routing sink: each MoE layer routes on the device
  // and nothing in the pass waits for it (the routing is recorded after the pass).
  bool routes_on_device() const {
    return resident && !on_routing &&
           (rows <= resident->max_indexed_rows ||
            (resident->min_grouped_rows > 0 && rows >= resident->min_grouped_rows));
  }
};

}  // namespace moeflux
