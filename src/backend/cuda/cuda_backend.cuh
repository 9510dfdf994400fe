// CudaBackend: the Backend ops (backend.hpp) on one GPU. Internal to the CUDA sources; the
// rest of the tree creates it through cuda_backend.hpp.
//
// Streams: every op is issued on the compute stream, in order, and returns at once; the host
// waits only in synchronize(), download() and the expert tier's fence(). Expert records are
// copied host -> device on the copy stream (cuda_tier.cu).
//
// Host -> device arguments (token ids, expert row lists, matmul descriptors) travel through a
// staging area: page-locked host memory mirrored by device memory, carved by a bump pointer
// and copied with the compute stream's other work. Everything staged since the last
// synchronize() may still be in flight, so the area is reset only there (when it fills up, a
// synchronize() makes room).
//
// Files: cuda_backend.cu (memory, staging, element-wise ops, norms, rope, routing, combine),
// cuda_matmul.cu (products of every weight format: warp-per-row matrix-vector for few rows,
// tiled GEMM for prompts), cuda_attention.cu, cuda_deltanet.cu, cuda_moe.cu (grouped expert
// FFN), cuda_tier.cu (expert cache tiers in device and page-locked memory), cuda_pick.cu
// (the greedy pick).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "backend/cuda/cuda_kernels.cuh"
#include "core/kept_blocks.hpp"

namespace moeflux::cuda {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;

  const char* name() const override { return "cuda"; }
  Memory memory() const override { return Memory::Device; }
  size_t threads() const override { return 1; }

  std::unique_ptr<BackendBuffer> allocate(size_t bytes, const char* what) override;
  std::unique_ptr<BackendBuffer> allocate_host(size_t bytes, const char* what) override;
  std::unique_ptr<TierMemory> expert_tier_memory(size_t slots, size_t record_bytes) override;
  std::unique_ptr<TierMemory> ram_tier_memory(size_t slots, size_t record_bytes) override;
  std::unique_ptr<HostPin> pin_host(void* p, size_t bytes) override;
  const uint8_t* resident(const uint8_t* host, size_t bytes) override;
  void upload(const float* host, size_t host_pitch, const Tensor& dst) override;
  void download(const Tensor& src, float* host, size_t host_pitch) override;
  void download_async(const Tensor& src, float* host, size_t host_pitch) override;
  void argmax_rows(const Tensor& x, std::span<int32_t> out,
                   std::span<uint8_t> finite) override;  // cuda_pick.cu
  void top_k_rows(const Tensor& x, size_t k, std::span<TopEntry> best,
                  std::span<uint8_t> finite) override;  // cuda_pick.cu
  void scatter_rows(const float* host, size_t host_pitch, std::span<const int32_t> rows,
                    const Tensor& dst) override;
  void fill(const Tensor& t, float value) override;
  bool begin_recording(uint64_t key, StepInputs in) override;
  void end_recording() override;
  void abort_recording(std::string_view why) override;
  bool replay(uint64_t key, StepInputs in) override;
  RecordingStats recording_stats() const override { return rec_stats_; }
  DeviceMemory device_memory() const override;
  HostReadRates host_read_rates() override;  // cuda_tier.cu
  void synchronize() override;

  void embed(const MatrixView& E, std::span<const int> tokens, const Tensor& X) override;
  void rmsnorm(const Tensor& x, const float* w, const Tensor& y, float eps,
               bool zero_centered) override;
  void matmul(const Tensor& X, std::span<const Projection> proj) override;
  void rope(const Tensor& x, const RopeTable& table, int pos0) override;
  void norm_rope(const Tensor& a, const float* wa, const Tensor& b, const float* wb, float eps,
                 bool zero_centered, const RopeTable& table, int pos0) override;
  void attention(const AttentionArgs& a) override;
  void head_matmul(const Tensor& X, const MatrixView& W, const Tensor& Y) override;
  void copy(const Tensor& src, const Tensor& dst) override;
  void conv1d_silu(const Tensor& x, const float* w, size_t kernel, const Tensor& state,
                   const Tensor& y) override;
  void gated_delta_rule(const DeltaRuleArgs& a) override;
  void rmsnorm_gated(const Tensor& x, const Tensor& z, const float* w, float eps,
                     const Tensor& y) override;
  void route(const Tensor& logits, const RouterSpec& spec, const RouteOutput& out) override;
  void expert_ffn(const Tensor& X, std::span<const ExpertTask> tasks, const Tensor& slots) override;
  void expert_ffn_indexed(const Tensor& X, const int32_t* ids, size_t k, const IndexedExperts& ex,
                          const Tensor& slots, size_t slots_per_token) override;
  void combine(const CombineArgs& a) override;
  void combine_norm(const CombineArgs& a, const float* w, float eps, bool zero_centered,
                    const Tensor& y) override;
  // expert_ffn_indexed with the pairs grouped by expert on the device (cuda_moe.cu): taken
  // for batches of more than kMatvecRows rows averaging kGroupedPairsPerExpert pairs per expert.
  void expert_ffn_grouped(const Tensor& X, const int32_t* ids, size_t k, const IndexedExperts& ex,
                          const Tensor& slots, size_t slots_per_token);

  cudaStream_t stream() const { return stream_; }
  cudaStream_t copy_stream() const { return copy_stream_; }
  int device() const { return device_; }

  // Copies `bytes` of host memory to device memory on the compute stream (through the staging
  // area) and returns the device address, valid for ops issued before the next synchronize().
  void* stage(const void* host, size_t bytes);
  // Launches the products of `descs` (cuda_matmul.cu): one launch per weight format (rows of
  // X at most kMatvecRows: matrix-vector kernels; else the GEMM). `reused`: the same
  // descriptors recur (a layer's projections, token after token), so their device copy is
  // kept (keep()) and found again instead of staged each time; while recording, every
  // descriptor is kept (a recording cannot stage).
  void run_matmuls(std::span<const MatmulDesc> descs, bool reused = false);
  // The tensor-core GEMM's inputs: every distinct X of `g` split into bf16 terms once, the
  // descriptors pointed at them (cuda_matmul.cu). split_rows: one X into given buffers
  // (rows * K words, rows * K / 32 floats).
  void split_inputs(std::span<MatmulDesc> g);
  void split_rows(const float* x, int ldx, int rows, int K, uint32_t* xs, float* xsum);
  // A device copy of `bytes` at `host` that outlives synchronize() and may be recorded: found
  // by content among the blocks kept before, else copied on the compute stream from a
  // page-locked copy that stays unchanged (when the arena is full it is emptied first, after
  // the stream drains — refused while recording).
  const void* keep(const void* host, size_t bytes);
  // stage() outside a recording (arguments that change call by call), keep() inside one.
  const void* stage_or_keep(const void* host, size_t bytes) {
    return capturing_ ? keep(host, bytes) : stage(host, bytes);
  }
  // While recording: the step's inputs in device memory, which the ops that take a token or a
  // position read (the values they are given must equal the step's, else the op throws; -1:
  // the op does not take that input); null otherwise.
  const StepInputs* recorded_step(const char* op, int token, int pos) const;
  // Device scratch of at least `bytes` (floats / ids / floats for attention's partial results),
  // valid until the next call of the same kind (each grows; never shrinks; growing one ends the
  // recordings that use it).
  float* scratch(size_t bytes) { return static_cast<float*>(expert_scratch_.get(bytes, stream_)); }
  int32_t* scratch_ids(size_t n) {
    return static_cast<int32_t*>(ids_scratch_.get(n * sizeof(int32_t), stream_));
  }
  float* scratch_attention(size_t floats) {
    return static_cast<float*>(attention_scratch_.get(floats * sizeof(float), stream_));
  }
  // n counters that are 0 at every call (attention's finished splits per row and head: zeroed
  // when the buffer grows, and the kernel that counts them up resets each to 0).
  int* attention_counts(size_t n) {
    return static_cast<int*>(attention_counts_.get(n * sizeof(int), stream_, true));
  }

  static constexpr int kMatvecRows = 8;

  // MOEFLUX_CUDA_PROFILE=1: every op waits for the GPU before and after itself and its time is
  // summed per op name; the table goes to stderr when the backend is destroyed. (Waiting
  // serialises host and GPU: the sum is each op's cost alone, not the pipelined speed.)
  class OpTimer {
   public:
    // rows: the op's rows of X; more than kMatvecRows are counted apart, as "op/prompt".
    OpTimer(CudaBackend& be, const char* op, size_t rows = 1);
    ~OpTimer();
    OpTimer(const OpTimer&) = delete;
    OpTimer& operator=(const OpTimer&) = delete;

   private:
    CudaBackend& be_;
    const char* op_;
    bool prompt_;
    double t0_ = 0;
  };

 private:
  int device_;
  cudaStream_t stream_ = nullptr, copy_stream_ = nullptr;
  uint8_t* staging_host_ = nullptr;
  uint8_t* staging_dev_ = nullptr;
  size_t staging_bytes_ = 0, staging_used_ = 0;
  // Bumped whenever device memory that a recording may have baked in is replaced (a scratch
  // buffer grown, the kept descriptors dropped): recordings made before are not replayed.
  uint64_t memory_epoch_ = 0;
  // A device buffer that grows on demand (to at least twice its size, after draining the
  // stream: the old buffer may still be read by queued kernels).
  class GrowingBuffer {
   public:
    explicit GrowingBuffer(uint64_t& epoch) : epoch_(epoch) {}
    ~GrowingBuffer() { cudaFree(p_); }
    // zeroed: a grown buffer's bytes are set to 0 (on `stream`, before anything after).
    void* get(size_t bytes, cudaStream_t stream, bool zeroed = false);

   private:
    uint64_t& epoch_;
    void* p_ = nullptr;
    size_t bytes_ = 0;
  };
  GrowingBuffer expert_scratch_{memory_epoch_}, ids_scratch_{memory_epoch_},
      attention_scratch_{memory_epoch_}, partial_scratch_{memory_epoch_},
      xsplit_scratch_{memory_epoch_}, attention_counts_{memory_epoch_};
  // Scratch of ops that wait for the device themselves and so are never recorded (argmax_rows,
  // top_k_rows): growing it must not end the recordings, so it counts in an epoch of its own.
  uint64_t unrecorded_epoch_ = 0;
  GrowingBuffer pick_scratch_{unrecorded_epoch_};
  // Page-locked host memory the picks copy their results into (a DMA straight from the device;
  // pageable memory would be staged): grown on demand, only between picks, which wait.
  void* pick_host_ = nullptr;
  size_t pick_host_bytes_ = 0;
  void* pick_host(size_t bytes);
  std::vector<void*> resident_;  // device copies made by resident()
  // keep(): byte blocks kept on the device, by content (hash, offset, size in the arena), in one
  // arena filled front to back: page-locked host bytes mirrored by device bytes. A block's host
  // bytes never change until the arena is emptied (which drains the stream and ends the
  // recordings), so a copy of them may be issued, or recorded and replayed, at any time.
  KeptBlocks kept_;
  uint8_t* kept_host_ = nullptr;
  uint8_t* kept_dev_ = nullptr;
  size_t kept_used_ = 0;
  // The arena's fill when the recording began: blocks kept since have their device copy only
  // in the recording, so they are forgotten if it does not run.
  size_t kept_blocks_at_capture_ = 0, kept_used_at_capture_ = 0;
  void forget_blocks_kept_in_recording() {
    kept_.truncate(kept_blocks_at_capture_);
    kept_used_ = kept_used_at_capture_;
  }
  std::vector<MatmulDesc> descs_, group_;  // host scratch of matmul() / expert_ffn()
  std::vector<char> done_;                 // host scratch of run_matmuls()
  bool profile_ = false;
  // Recorded decode steps (begin_recording / replay): executable graphs by key, each with the
  // memory epoch it was recorded in and when it last ran (the least recently run is dropped
  // beyond kMaxRecordings); the step inputs, page-locked (a recording's first node copies them
  // to step_dev_, so a replay reads what the host wrote before launching it) and an event after
  // the last run (the host writes new inputs only once that run has read the old ones).
  // Recording stops being tried after kMaxFailures failures in a row. MOEFLUX_CUDA_GRAPHS=0
  // turns recording off (ops issued one by one, for comparison).
  struct Recording {
    uint64_t key = 0, epoch = 0, last_run = 0;
    cudaGraphExec_t exec = nullptr;
  };
  std::vector<Recording> recordings_;
  static constexpr size_t kMaxRecordings = 8;
  StepInputs* step_host_ = nullptr;
  StepInputs* step_dev_ = nullptr;
  cudaEvent_t step_read_ = nullptr;
  // In a recording, route()'s copies of the routing to the host run on a branch of their own
  // (side_stream_: from route_done_; side_done_ recorded where it joins), joined at the
  // recording's end: nothing in the pass waits for them (the host reads the routing after the
  // pass). side_pending_: a branch was forked and not yet joined (the next route's kernel waits
  // for it before it rewrites the device routing those copies read).
  cudaStream_t side_stream_ = nullptr;
  cudaEvent_t route_done_ = nullptr, side_done_ = nullptr;
  bool side_pending_ = false;
  bool side_copies_ = true;  // MOEFLUX_CUDA_SIDE_COPIES=0: on the compute stream (to compare)
  int side_delay_us_ = 0;    // MOEFLUX_CUDA_SIDE_DELAY_US (tests): the branch waits first
  cudaError_t join_side_branch();
  uint64_t recording_key_ = 0, runs_ = 0;
  bool capturing_ = false, graphs_enabled_ = true;
  bool delta_chunked_ = true;  // gated_delta_rule's chunked form for prompts (cuda_deltanet.cu)
  bool fused_combine_norm_ = true;  // combine_norm in one kernel (else combine, then rmsnorm)
  // A recording's kernel-to-kernel edges made programmatic (each kernel's preamble overlaps the
  // end of the one before; cuda_kernels.cuh await_inputs): sm_90+, MOEFLUX_CUDA_PDL != 0.
  bool programmatic_edges_ = true;
  int capture_failures_ = 0;
  static constexpr int kMaxFailures = 16;
  RecordingStats rec_stats_;
  std::optional<HostReadRates> host_read_rates_;  // measured by the first host_read_rates()
  // Writes the inputs for the next run of a recording (waiting, rarely, for the last run to
  // have read the previous ones).
  void set_step_inputs(StepInputs in);
  // Launches `r` and notes the run.
  cudaError_t launch_recording(Recording& r);
  // A recording that will not run: the error state cleared, the blocks kept for it forgotten,
  // the failure counted with its reason.
  void count_failure(std::string why);
  struct OpTime {
    const char* op;
    bool prompt;
    double seconds;
    uint64_t calls;
  };
  std::vector<OpTime> op_times_;
};

// A DevMat describing a MatrixView (pointers unchanged: they must already be device memory).
DevMat dev_mat(const MatrixView& m);

// Grid size for n work items of `per_block` each.
inline unsigned blocks_for(size_t n, size_t per_block) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

// The matrix-vector kernel for W (and W2 of a dual product): its format's vector path when
// rows are whole 16-byte chunks, 16-byte aligned; else kGeneric.
int matvec_code(const DevMat& w, const DevMat* w2);
// Launches the matrix-vector kernel `code` over the n products of `dev` (device memory), each
// at most max_rows rows of W (sum_rows in all), max_t rows of X (<= kMatvecRows), max_cols
// columns; `dual`: all of them kDual, else none. descs_written: an earlier kernel wrote the
// descriptors (the kernel reads them only once that kernel has finished). ix: the products are
// expert_ffn_indexed's, built by each block from the router's ids (dev unused; descs_written,
// one row of X).
void launch_matvec(int code, const MatmulDesc* dev, int n, int max_rows, size_t sum_rows, int max_t,
                   int max_cols, bool dual, cudaStream_t s, bool descs_written = false,
                   const IndexedProducts* ix = nullptr);

// The GEMM kernel for products of W (format, whole 32-column k-tiles, 16-byte aligned rows;
// base_aligned: W's records start 16-byte aligned where W.data holds an offset into them):
// the tensor-core one where it can take them, else the SIMT one.
int gemm_kernel_for(const DevMat& w, bool base_aligned = true);
// Whether gemm_kernel_for's answer is the tensor-core kernel (which reads X's split terms).
bool is_tensor_gemm(int kernel);
// The tensor-core GEMM's tile width (inputs per block, 32 or 64) for products of tiles32 /
// tiles64 input tiles of 32 / 64 inputs in all: narrow tiles decode each W tile for fewer
// inputs but waste fewer MMAs on short products (MoE experts of ~32 rows); the choice minimises
// Σ tiles x (decode + width), a W tile's decode counted as 64 inputs' MMAs (an estimate).
int gemm_tile_width(size_t tiles32, size_t tiles64);
// Columns of each product split across `splits` blocks (tensor-core GEMM only), their sums in
// `partial` (n * splits * max_t * max_rows floats), then reduced in split order.
struct GemmSplit {
  int splits = 1;
  float* partial = nullptr;
};
// Launches GEMM kernel `kernel` over the n products of `dev` (device memory): each at most
// max_rows rows of W and max_t rows of X (blocks past a product's own T return at once), in
// tiles of bn inputs (the tensor-core kernel). k64: every product's K is a multiple of 64 (the
// tensor-core kernel then takes 64 columns a step).
void launch_gemm(int kernel, const MatmulDesc* dev, int n, int max_rows, int max_t, int bn,
                 bool k64, cudaStream_t s, const GemmSplit& split = {});

// Checks the launch just issued.
void check_launch(const char* what);

// Whether environment variable `name` is set to exactly `value` (the MOEFLUX_CUDA_* switches
// that pick another path, to compare).
inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v && std::string(v) == value;
}

}  // namespace moeflux::cuda
