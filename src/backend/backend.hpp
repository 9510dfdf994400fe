// The compute seam: the operations a forward pass needs, implemented once per processor kind.
//
// Model code (src/model/) calls only these operations, on Tensors and weight views in the
// backend's memory (backend/tensor.hpp); it never touches a kernel of a particular processor.
// The CPU backend (backend/cpu/cpu_backend.hpp) is the reference every other backend is tested
// against, op by op, on fresh random inputs.
//
// Execution model: ops are issued in order on the backend's one compute stream and may run
// asynchronously; host-visible outputs (routing choices) are valid after synchronize(). The CPU
// backend runs each op to completion before returning, on its thread pool. A backend is driven
// by one thread at a time (the Engine serialises forward passes).
//
// Shapes use T for the tokens of a chunk (rows), H for the hidden size. Every op states what it
// computes; preconditions are asserted (MF_ASSERT, on in release builds).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "backend/tensor.hpp"
#include "core/quant_format.hpp"
#include "core/top_k.hpp"
#include "experts/tier_memory.hpp"

namespace moeflux {

// Memory owned by a backend (host RAM for the CPU backend, device memory for a GPU backend).
class BackendBuffer {
 public:
  virtual ~BackendBuffer() = default;
  virtual void* data() = 0;
  virtual size_t bytes() const = 0;
};

// Rotary embedding table for positions [0, positions): cos/sin of p * inv_freq[i], times the
// attention factor, i < rotary_dim / 2 (rope.hpp has the variants that make inv_freq).
struct RopeTable {
  Tensor cos, sin;  // [positions, rotary_dim / 2]
  int rotary_dim = 0;
};

// Keys and values of one attention layer of one sequence, preallocated for `capacity`
// positions; positions [0, length) are valid. v may be a column view of k (MLA: the values are
// the latent part of the keys), then one write of a position's k row also writes its v.
struct KvCache {
  Tensor k;  // [capacity, kv_heads * key_dim]
  Tensor v;  // [capacity, kv_heads * value_dim]
};

// Recurrent state of one Gated DeltaNet layer of one sequence.
struct DeltaNetState {
  Tensor conv;  // [conv_dim, kernel - 1]: the last kernel-1 inputs per channel, oldest first
  Tensor S;     // [value_heads, key_head_dim * value_head_dim]: S_h[i][j], i keys, j values
};

// One output of a matmul over a shared input X: Y (+)= X W^T (+ bias).
struct Projection {
  const MatrixView* w = nullptr;  // [rows, X.cols]
  Tensor y;                       // [T, rows]
  const float* bias = nullptr;    // [rows] or null
  bool accumulate = false;        // add to y instead of overwriting it
};

// Key dim dk and value dim dv may differ (MLA decodes with keys [latent | rope key] of
// kv_lora_rank + qk_rope_head_dim and values [latent] of kv_lora_rank, one kv head). When the
// cache's v is a column view of its k, v must be the same column view of k.
struct AttentionArgs {
  Tensor q;     // [T, heads, dk], already normalised and rotated
  Tensor k;     // [T, kv_heads, dk]: this chunk's keys (rotated)
  Tensor v;     // [T, kv_heads, dv]: this chunk's values
  Tensor gate;  // [T, heads, dv], or empty: output *= sigmoid(gate)
  KvCache* cache = nullptr;
  int pos0 = 0;        // position of row 0; the cache holds [0, pos0) of this sequence
  float scale = 1.0f;  // softmax scale (1/sqrt(dk) for plain attention)
  Tensor out;          // [T, heads * dv]
};

// Gated DeltaNet recurrence over a chunk (transformers' chunk_gated_delta_rule /
// recurrent_gated_delta_rule with l2-normalised q, k). For each token t and value head h (key
// head kh = h / (value_heads / key_heads)), with q, k l2-normalised (eps 1e-6) and q scaled by
// 1/sqrt(dk):
//   g = -exp(A_log[h]) softplus(a[t,h] + dt_bias[h]),  beta = sigmoid(b[t,h])
//   S_h <- exp(g) S_h;  S_h <- S_h + k (beta (v - S_h^T k))^T;  out[t,h] = S_h^T q
struct DeltaRuleArgs {
  Tensor q, k;  // [T, key_heads, dk]; the op may overwrite them (the CPU normalises in place)
  Tensor v;     // [T, value_heads, dv]
  Tensor a, b;  // [T, value_heads]
  const float* A_log = nullptr;
  const float* dt_bias = nullptr;
  DeltaNetState* state = nullptr;
  Tensor out;  // [T, value_heads, dv]
};

// How a router's logits become experts and weights.
enum class RouterKind {
  // p = softmax(logits); top-k of p; weights p_e (renormalised to sum 1 if norm_topk_prob).
  SoftmaxTopK,
  // DeepSeek-V3's `noaux_tc` (also GLM-4.5's), as transformers computes it, per token:
  //   s_e = sigmoid(logit_e);  c_e = s_e + bias_e                          (choice scores)
  //   group g (E / n_group consecutive experts): score_g = sum of its two largest c_e;
  //   keep the topk_group groups of largest score (the others' experts drop out);
  //   ids = top-k of c over the kept experts (k <= topk_group · E / n_group);
  //   w_i = s_{ids_i} (/ (Σ_i s_{ids_i} + 1e-20) if norm_topk_prob) · routed_scaling_factor.
  // Ties go to the lower index (groups and experts).
  SigmoidGroupTopK,
};
struct RouterSpec {
  RouterKind kind = RouterKind::SoftmaxTopK;
  int top_k = 0;
  bool norm_topk_prob = true;
  // SigmoidGroupTopK only:
  int n_group = 1, topk_group = 1;  // n_group divides E, E / n_group >= 2
  float routed_scaling_factor = 1.0f;
  const float* bias = nullptr;  // [E] e_score_correction_bias, backend memory
};

// Routing decisions for T tokens: ids[t * k + i], weights[t * k + i], i < k, best first, in
// host memory the host reads after synchronize(); the weights also in backend memory
// (device_weights, [T * k], what combine() reads; the same pointer as `weights` on the CPU).
struct RouteOutput {
  int32_t* ids = nullptr;
  float* weights = nullptr;
  size_t k = 0;
  float* device_weights = nullptr;  // null: the host copy only
  int32_t* device_ids = nullptr;    // the ids in backend memory too (expert_ffn_indexed); or null
};

struct MlpWeights {
  MatrixView gate, up, down;  // y = down (silu(gate x) * up x)
};

// One expert's FFN over some rows of X, written to some rows of the slot tensor:
//   out[out_rows[j]] = down (silu(gate X[in_rows[j]]) * up X[in_rows[j]]),  j < n.
struct ExpertTask {
  MlpWeights w;
  size_t intermediate = 0;
  const int32_t* in_rows = nullptr;   // host memory
  const int32_t* out_rows = nullptr;  // host memory
  size_t n = 0;
  // Readiness of the weights (an event of the backend's copy stream); null = ready now.
  const void* ready = nullptr;
};

// Every expert of one MoE layer in backend memory, found by index on the device: no host
// round trip between routing and the expert FFN.
// A matrix inside an expert record: its format, shape and byte offset in the record.
struct RecordMatrix {
  QuantFormat fmt;
  size_t rows = 0, cols = 0, offset = 0;
  MatrixView at(const uint8_t* record) const {
    return MatrixView::from_record(fmt, rows, cols, record + offset);
  }
};

// expert_ffn_indexed groups a batch's (row, rank) pairs by expert itself (a GEMM per expert)
// when it has more than 8 rows and at least this many pairs per expert on average; fewer pairs
// run one matrix-vector product each.
inline constexpr size_t kGroupedPairsPerExpert = 2;

struct IndexedExperts {
  const uint8_t* const* records = nullptr;  // [experts] record addresses, in backend memory
  size_t experts = 0;
  RecordMatrix gate, up, down;  // gate, up: [intermediate, H]; down: [H, intermediate]
  size_t record_alignment = 1;  // every record address is a multiple of this
};

// out[t] += Σ_{s<S} w[t,s] · slots[t*S + s]  for t < T, where w[t,s] = routed[t*K + s] for s < K
// and, for the extra slots s >= K (shared expert, dense MLP), sigmoid(gate[t]) if gate is
// given, else 1. The sum runs in slot order.
struct CombineArgs {
  Tensor slots;                   // [T * S, H]
  size_t slots_per_token = 0;     // S
  const float* routed = nullptr;  // [T, K] or null when K = 0
  size_t k = 0;                   // K
  Tensor gate;                    // [T, 1] logits, or empty
  Tensor out;                     // [T, H]
};

// A device's memory: in use (by any process) and in all; zeros for host memory.
struct DeviceMemory {
  size_t used = 0, total = 0;
};

// How fast a device reads page-locked host memory, bytes per second: by its copy engine
// (cudaMemcpy into device memory) and by kernels reading it where it lies (mapped memory, as
// --gpu-reads in-place does). Zeros: not measured, or no bus to measure.
struct HostReadRates {
  double copy = 0, in_place = 0;
};

// Host memory page-locked by Backend::pin_host while this lives.
class HostPin {
 public:
  virtual ~HostPin() = default;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;  // "cpu", "cuda"
  virtual Memory memory() const = 0;     // where its tensors live
  virtual size_t threads() const = 0;    // compute threads (CPU) or 1

  // --- memory -----------------------------------------------------------------------------
  // `bytes` of backend memory, 64-byte aligned, contents unspecified. Throws moeflux::Error
  // naming `what` when the memory cannot be had.
  virtual std::unique_ptr<BackendBuffer> allocate(size_t bytes, const char* what) = 0;
  // `bytes` of host memory the backend copies to and from fastest (page-locked for a GPU;
  // ordinary memory for the CPU). Throws like allocate().
  virtual std::unique_ptr<BackendBuffer> allocate_host(size_t bytes, const char* what) = 0;
  // Memory for the expert cache's compute tier (the fastest, whose records expert_ffn reads),
  // `slots` records of `record_bytes`; null when host memory is the compute tier (CPU). Records
  // copied in are usable by ops issued after the tier's fence().
  virtual std::unique_ptr<TierMemory> expert_tier_memory(size_t slots, size_t record_bytes) = 0;
  // Memory for the RAM tier, from which records are copied into the compute tier: page-locked
  // for a GPU (full-speed DMA); null = ordinary host memory will do (CPU).
  virtual std::unique_ptr<TierMemory> ram_tier_memory(size_t slots, size_t record_bytes) = 0;
  // Makes `bytes` of existing host memory at `p` as fast to copy to and from as allocate_host's
  // (page-locked, for a GPU) while the handle lives; null when that gains nothing (CPU) or the
  // memory cannot be locked (copies then take the ordinary path). `p` must outlive the handle.
  virtual std::unique_ptr<HostPin> pin_host(void* p, size_t bytes) {
    (void)p, (void)bytes;
    return nullptr;
  }
  // The resident weights (a host mapping of `bytes` bytes) in backend memory: the CPU backend
  // uses the mapping itself; a GPU backend copies it once. Valid while the backend lives.
  virtual const uint8_t* resident(const uint8_t* host, size_t bytes) = 0;
  // Copies between host memory and a tensor (same shape; rows may have different pitches).
  virtual void upload(const float* host, size_t host_pitch, const Tensor& dst) = 0;
  virtual void download(const Tensor& src, float* host, size_t host_pitch) = 0;
  // download() queued behind the work issued so far, landed by the next synchronize() (host
  // memory page-locked by allocate_host or pin_host; other memory may make it wait at once).
  virtual void download_async(const Tensor& src, float* host, size_t host_pitch) {
    download(src, host, host_pitch);
  }
  // out[r] = the index of row r's largest value, NaN never counting (the lowest index on ties;
  // 0 when every value is NaN), and finite[r] = 1 if every value of row r is finite, else 0, for
  // r < x.rows(): core/argmax.hpp's greedy pick and core/finite.hpp's check, computed where x
  // lives so that a GPU backend need not scan a vocabulary's logits on the host. Waits.
  virtual void argmax_rows(const Tensor& x, std::span<int32_t> out, std::span<uint8_t> finite) = 0;
  // best[r * k + i], i < k: the k best values of row r (core/top_k.hpp: value descending, then
  // the lower index; NaN ranks as -inf and is reported as -inf, -0 may come back as +0: equal
  // values either way), best first, and finite[r] as
  // argmax_rows', for r < x.rows(); 0 < k <= x.cols. The sampler's top-k (Sampler::
  // sample_top_k) computed where x lives. Waits.
  virtual void top_k_rows(const Tensor& x, size_t k, std::span<TopEntry> best,
                          std::span<uint8_t> finite) = 0;
  // dst[rows[j]] = host row j (rows host_pitch floats apart, dst's width), j < rows.size(), in
  // issue order with the ops around it. Does not wait: the host rows are copied before it
  // returns (a GPU backend stages them), so the caller may reuse them at once.
  virtual void scatter_rows(const float* host, size_t host_pitch, std::span<const int32_t> rows,
                            const Tensor& dst) = 0;
  virtual void fill(const Tensor& t, float value) = 0;
  // --- recorded decode steps (optional) ---------------------------------------------------
  // A GPU backend may record the ops of a one-row decode step once and replay the recording
  // for later tokens (CUDA graphs: a token's host cost becomes one launch instead of one per
  // op). A recording's only inputs that change between replays are the step's token id and
  // position (StepInputs): while recording, the ops that take them (embed, rope, attention)
  // must be given exactly those values and read them from backend memory, where replay()
  // writes the new ones. Everything else an op is given — buffers, shapes, weights — is baked
  // in, so the caller names it by `key`: equal keys promise the same ops on the same buffers.
  //
  // begin_recording(key, in): false when the backend does not record now (the CPU backend
  // never does); then nothing changes. Ops issued until end_recording() are recorded, not run;
  // an op that cannot be recorded (it would wait for the device, grow a buffer or stage host
  // data) throws moeflux::Error, and the caller calls abort_recording() — nothing recorded has
  // run or will — and issues the ops again one by one; `why` is kept for recording_stats().
  // end_recording() keeps the recording under `key` and runs it once with `in`; afterwards
  // everything is as if the ops had been issued one by one. replay(key, in): runs the recording
  // kept under `key` with new inputs and returns true; false when there is none, or when the
  // backend has since replaced memory the recording uses (a scratch buffer grown by a longer
  // batch). Nothing issued in a recording or a replay may be waited for except by synchronize() or
  // download().
  struct StepInputs {
    int token = 0;
    int pos = 0;
  };
  struct RecordingStats {
    uint64_t recorded = 0;       // recordings made and run
    uint64_t replayed = 0;       // replays run
    uint64_t failed = 0;         // recordings abandoned (an op that cannot be recorded)
    std::string last_failure;    // why the last one was abandoned
    uint64_t side_branches = 0;  // copies recorded on a branch the pass does not wait for
  };
  virtual bool begin_recording(uint64_t key, StepInputs in) {
    (void)key, (void)in;
    return false;
  }
  virtual void end_recording() {}
  virtual void abort_recording(std::string_view why) { (void)why; }
  virtual bool replay(uint64_t key, StepInputs in) {
    (void)key, (void)in;
    return false;
  }
  virtual RecordingStats recording_stats() const { return {}; }

  // The memory of the backend's device (zeros for the CPU).
  virtual DeviceMemory device_memory() const { return {}; }
  // HostReadRates of this machine, measured by the first call (a few milliseconds on scratch
  // memory of its own; later calls return the same): kernels read host memory in place at
  // 0.63x the copy engine on one H100 host and 0.93x on another (docs/PERF.md), which decides
  // whether reading in place pays. Zeros for a backend that reads no host memory across a bus.
  virtual HostReadRates host_read_rates() { return {}; }
  // Waits for every op issued so far.
  virtual void synchronize() = 0;
  // A hint that ops follow soon, given before the caller waits for something else: a backend
  // whose workers sleep when idle (the CPU's pool) wakes them now, so that their wake-up
  // overlaps that wait instead of delaying the ops. Changes no result.
  virtual void wake() {}

  // --- ops --------------------------------------------------------------------------------
  // X[t] = E[tokens[t]] (any weight format, decoded to float32).
  virtual void embed(const MatrixView& E, std::span<const int> tokens, const Tensor& X) = 0;

  // y[v] = x[v] / sqrt(mean(x[v]^2) + eps) * (zero_centered ? 1 + w : w) for every innermost
  // vector v of x (rank 2: rows; rank 3: heads). y may alias x.
  virtual void rmsnorm(const Tensor& x, const float* w, const Tensor& y, float eps,
                       bool zero_centered) = 0;

  // Every projection p: Y_p[t] (+)= W_p X[t] (+ b_p), t < T — one pass, all outputs together.
  // T = 1 is the matrix-vector product of decode.
  virtual void matmul(const Tensor& X, std::span<const Projection> proj) = 0;

  // Rotates each vector of x [T, heads, dim] in place, row t at position pos0 + t, on its first
  // rotary_dim dims (rotate_half convention, rope.hpp).
  virtual void rope(const Tensor& x, const RopeTable& table, int pos0) = 0;

  // An attention layer's queries and keys normalised and rotated: for x = a, then b (each
  // [T, heads, dim], T the same; b may be empty), every vector in place,
  //   x <- rmsnorm(x, w)   (as rmsnorm(), with eps and zero_centered)  when w is given,
  //   x <- rope(x)         (as rope(), row t at position pos0 + t).
  // This composition by default; a backend may do it in one pass over both.
  virtual void norm_rope(const Tensor& a, const float* wa, const Tensor& b, const float* wb,
                         float eps, bool zero_centered, const RopeTable& table, int pos0) {
    for (auto [x, w] : {std::pair{&a, wa}, std::pair{&b, wb}}) {
      if (x->empty()) continue;
      if (w) rmsnorm(*x, w, *x, eps, zero_centered);
      rope(*x, table, pos0);
    }
  }

  // Appends k, v at positions [pos0, pos0 + T) of the cache, then causal attention with GQA
  // (kv head = h / (heads / kv_heads)) over positions [0, pos0 + t] for row t:
  //   out[t,h] = Σ_s softmax_s(scale · q[t,h]·k[s]) v[s]  (· sigmoid(gate[t,h]) if gated)
  // (AttentionArgs: key and value dims may differ).
  virtual void attention(const AttentionArgs& a) = 0;

  // Per-head product with a stacked weight: W [heads * R, C] holds head h's matrix W_h in rows
  // [h R, (h + 1) R);  Y[t,h] = W_h X[t,h]  for X [T, heads, C], Y [T, heads, R], t < T.
  // (MLA: the per-head absorbed projections of kv_b_proj.) Y must not overlap X.
  virtual void head_matmul(const Tensor& X, const MatrixView& W, const Tensor& Y) = 0;

  // dst = src, element by element, for tensors of one shape (rank 2 or 3, any pitches); the two
  // must not overlap.
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;

  // Causal depthwise conv1d over [state | x] then SiLU, per channel c (kernel K = w's width):
  //   y[t,c] = silu(Σ_j w[c,j] · u[t+j,c]),  u = the K-1 state inputs followed by x's rows;
  // the state becomes the last K-1 inputs. x, y: [T, C]; w: [C, K] (float32).
  virtual void conv1d_silu(const Tensor& x, const float* w, size_t kernel, const Tensor& state,
                           const Tensor& y) = 0;

  virtual void gated_delta_rule(const DeltaRuleArgs& a) = 0;

  // y[t,h] = rmsnorm(x[t,h]) · w · silu(z[t,h])  over x, z, y: [T, heads, dim]; w: [dim].
  virtual void rmsnorm_gated(const Tensor& x, const Tensor& z, const float* w, float eps,
                             const Tensor& y) = 0;

  // Experts (and weights) for each row of logits [T, experts]; see RouterKind.
  virtual void route(const Tensor& logits, const RouterSpec& spec, const RouteOutput& out) = 0;

  // Runs every task (ExpertTask) on rows of X [T, H] into rows of slots [rows, H]; tasks may
  // share input rows, never output rows.
  virtual void expert_ffn(const Tensor& X, std::span<const ExpertTask> tasks,
                          const Tensor& slots) = 0;

  // The routed experts of every row, chosen on the device: for t < T, i < k and
  // e = ids[t * k + i] (backend memory, as route() wrote it to device_ids),
  //   slots[t * S + i] = down_e (silu(gate_e X[t]) * up_e X[t])  with e's record records[e].
  // Nothing here is read by the host: a forward pass with every expert resident never waits.
  virtual void expert_ffn_indexed(const Tensor& X, const int32_t* ids, size_t k,
                                  const IndexedExperts& ex, const Tensor& slots,
                                  size_t slots_per_token) = 0;

  virtual void combine(const CombineArgs& a) = 0;

  // combine(a), then y = rmsnorm(a.out, w) (as rmsnorm(), with eps and zero_centered): a layer's
  // combine and the next layer's input norm. This composition by default; a backend may do both
  // in one pass over out.
  virtual void combine_norm(const CombineArgs& a, const float* w, float eps, bool zero_centered,
                            const Tensor& y) {
    combine(a);
    rmsnorm(a.out, w, y, eps, zero_centered);
  }
};

}  // namespace moeflux
