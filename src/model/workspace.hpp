// Preallocated activations of a forward pass: every tensor a batch of up to `max_rows` rows
// needs, carved from one backend allocation made when the engine opens, and the host-side
// scratch of the MoE dispatch. Nothing on the per-token path allocates.
#pragma once

#include <memory>
#include <vector>

#include "backend/backend.hpp"
#include "experts/expert_streamer.hpp"
#include "model/config.hpp"
#include "model/forward_context.hpp"

namespace moeflux {

struct Workspace {
  size_t max_rows = 0;   // T at most
  size_t max_slots = 0;  // S: expert outputs per token (active experts + shared / dense)
  Tensor h;              // [T, H]: the hidden state (residual stream)
  Tensor xn;             // [T, H]: normalised input of a sublayer
  Tensor proj;           // [T, P]: fused projection outputs (column ranges per projection)
  Tensor mix;            // [T, M]: attention / delta-rule output
  Tensor conv;           // [T, conv_dim]: DeltaNet conv output (q | k | v)
  Tensor gated;          // [T, value_dim]: DeltaNet gated-norm output
  Tensor q_full;         // [T, heads * qk_head_dim]: MLA queries [nope | rope] per head
  Tensor q_latent;       // [T, heads * (kv_lora + rope)]: MLA absorbed queries [latent | rope]
  Tensor o_latent;       // [T, heads * kv_lora]: MLA attention output in latent space
  Tensor slots;          // [T * S, H]: expert outputs, slot s of row t at row t * S + s
  Tensor route_weights;  // dense [T, K] (one row of T * K), backend memory: combine reads it
  int32_t* route_ids_dev = nullptr;  // [T * K], backend memory (expert_ffn_indexed reads it)
  // Routing as the host reads it, one area of T * K per layer (so that a forward pass that
  // does not wait per layer can record every layer's routing at its end).
  int32_t* route_ids_host = nullptr;    // [layers][T * K]
  float* route_weights_host = nullptr;  // [layers][T * K]
  size_t route_stride = 0;              // T * K
  int32_t* route_ids(int layer) const { return route_ids_host + layer * route_stride; }
  float* route_weights_of(int layer) const { return route_weights_host + layer * route_stride; }
  Tensor logits;  // [kLogitRows, vocab]
  static constexpr size_t kLogitRows = 16;

  std::unique_ptr<BackendBuffer> buffer;
  std::unique_ptr<BackendBuffer> host_buffer;  // routing read by the host

  static Workspace create(Backend& be, const ModelConfig& c, size_t max_rows, int active_experts);
};

// Host-side scratch of the MoE dispatch (which rows go to which expert), sized once.
struct MoeScratch {
  std::vector<int32_t> count;                  // [E]: rows per expert
  std::vector<int32_t> first;                  // [E + 1]: start of each expert's rows
  std::vector<int32_t> in_rows, out_rows;      // [T * K]: per expert, its rows and their slots
  std::vector<int32_t> all_rows, extra_slots;  // [T]: t, and t * S + K (shared / dense slot)
  std::vector<int> wanted;                     // experts used by the batch, ascending
  std::vector<ExpertTask> tasks;
  std::vector<ExpertHandle> ready;
  std::vector<Placement> placement;    // of the request being made
  std::vector<RoutingRecord> records;  // tracing only

  void reserve(const ModelConfig& c, size_t max_rows, int active_experts);
};

}  // namespace moeflux
