// Model (an opened package: immutable, shareable), Engine (what sessions share: the backend
// and its threads, resident weights in backend memory, the expert cache tiers and readers, the
// forward workspace) and the options that configure an engine.
//
// Threading: any number of Sessions on one Engine, from any threads. Forward passes are
// serialised by the engine (one batch at a time owns the backend, the workspace and the
// streamer); a server gets throughput by batching sessions into one forward (eval_batch in
// session.hpp), where each MoE layer fetches the union of their experts once.
#pragma once

#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "backend/backend.hpp"
#include "experts/expert_streamer.hpp"
#include "formats/package.hpp"
#include "model/family.hpp"
#include "model/forward.hpp"
#include "model/forward_context.hpp"
#include "model/rope.hpp"
#include "model/weights.hpp"
#include "model/workspace.hpp"

namespace moeflux {

enum class GpuReads { Copy, InPlace, Auto };
GpuReads parse_gpu_reads(const std::string& s);  // copy|in-place|auto; throws Error
const char* gpu_reads_name(GpuReads r);

// --gpu-reads auto's choice for an engine that could read in place: yes where reading in place
// measured faster — the GPU tier keeps records (read in place, it admits only records used
// more often than its eviction victim) or the CPU computes a share (the GPU's side starts
// without waiting for copies) — on a machine whose kernels read page-locked host memory at
// kAutoInPlaceMinShare of the copy engine's rate or more (Backend::host_read_rates). Measured on
// two H100 hosts (docs/PERF.md, 2026-12-05): where kernels read at 0.93x, in place won by 7-9%
// with a GPU tier or a CPU share; where they read at 0.64x, copying won by 4-6% with the CPU's
// share and by 32% at --gpu-mem 25% alone.
inline constexpr double kAutoInPlaceMinShare = 0.85;
bool auto_reads_in_place(bool tier_keeps_records, bool cpu_share, const HostReadRates& rates);

struct EngineOptions {
  std::string backend = "cpu";  // --backend: cpu, cuda, or auto (cuda when a GPU is present)
  int gpu_device = 0;           // --gpu: CUDA device index
  // --gpu-mem: expert bytes the GPU tier keeps for reuse, besides its working slots (which
  // hold the experts of the layer being computed); kGpuMemAll = every expert of the model.
  size_t gpu_cache_bytes = 0;
  static constexpr size_t kGpuMemAll = ~size_t{0};
  double gpu_cache_percent = 0;  // --gpu-mem N%: instead, this share of every expert's bytes
  size_t threads = 0;            // compute threads (0 = all hardware threads)
  int active_experts = 0;        // experts run per token (--k); 0 = the model's top_k
  // Rows per forward pass (prompt chunk; batched decode width); 0 = the backend's default:
  // kPrefillChunkDevice on a GPU (a GEMM decodes each expert's weights once for all of a chunk's
  // rows: 512 rows measured +31% over 256 on the H200, docs/PERF.md), kPrefillChunkHost on the
  // CPU (no gain from 512 there). It sizes the workspace, linearly.
  size_t prefill_chunk = 0;
  static constexpr size_t kPrefillChunkHost = 256, kPrefillChunkDevice = 512;
  size_t context = 0;   // --ctx: positions a session can hold; 0 = the model's maximum
  bool timing = false;  // collect per-layer timings (--timing)
  // --cpu-experts: with a GPU backend and streamed experts, RAM-tier experts of small batches
  // may be computed by the CPU meanwhile (model/host_experts.hpp).
  CpuExpertsMode cpu_experts = CpuExpertsMode::Off;
  // --gpu-reads: with a GPU backend and streamed experts, how the GPU computes RAM-tier records
  // of small batches. InPlace: its kernels read them where they lie (page-locked host memory
  // mapped into the GPU) instead of copying them into the GPU tier first, which then admits a
  // record only while it has room or when the record is used more often than what it would
  // evict. Copy: every record the GPU computes is copied in. Auto: InPlace where that measured
  // faster (auto_reads_in_place), else Copy.
  GpuReads gpu_reads = GpuReads::Auto;
  StreamOptions stream;    // RAM cache, I/O, prefetch (max_active is set from --k)
  RoutingSink on_routing;  // routing traces (null: none)
};

class Model {
 public:
  // Opens and validates a package (resident tensors checked against their checksums unless
  // opts say not: --no-verify), binds its resident weights. Throws moeflux::Error.
  static std::unique_ptr<Model> open(const std::string& dir, const PackageOpenOptions& opts = {});

  const Package& package() const { return pkg_; }
  const ModelConfig& config() const { return pkg_.config(); }
  const ModelWeights& weights() const { return weights_; }

 private:
  explicit Model(Package pkg);
  Package pkg_;
  ModelWeights weights_;
};

class Engine {
 public:
  // Creates the backend (opts.backend), copies the resident weights into its memory, its
  // workspace, rope table and the expert streamer (with a GPU tier in front of the RAM tier
  // for a GPU backend). Throws moeflux::Error for options the model cannot take (--k above its
  // experts, a context above its positions) or a backend that cannot be had.
  Engine(const Model& model, const EngineOptions& opts);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Model& model() const { return model_; }
  const ModelConfig& config() const { return model_.config(); }
  const EngineOptions& options() const { return opts_; }
  Backend& backend() { return *backend_; }
  // The weights as the backend reads them (in its memory).
  const ModelWeights& weights() const { return weights_; }
  int active_experts() const { return active_experts_; }
  size_t context() const { return context_; }       // positions a session may hold at most
  size_t max_rows() const { return ws_.max_rows; }  // rows of one forward pass

  // The streamer and timings are shared by every session; read them while no forward runs.
  ExpertStreamer& streamer() { return *streamer_; }
  const ExpertStreamer& streamer() const { return *streamer_; }
  const ForwardTimings& timings() const { return timings_; }
  void reset_timings();

  // Runs one batch (forward.hpp) under the engine's lock: rows `tokens`, sequences `seqs`,
  // logits of rows [logits_row, logits_row + logits.size()) into the host buffers `logits`, and
  // with `picks` (one per logits row) each row's pick, computed by the backend (forward.hpp).
  void forward(std::span<const int> tokens, std::span<const SequenceChunk> seqs, size_t logits_row,
               std::span<float* const> logits, std::span<LogitsPick> picks = {});

  // A fresh sequence state with room for `context` positions (0: the engine's), in backend
  // memory; `*buffer` receives its memory. Throws moeflux::Error naming --ctx when the machine
  // cannot hold it.
  SequenceState new_sequence(size_t context, std::unique_ptr<BackendBuffer>* buffer);
  // Resets a state to position 0 (recurrent state zeroed).
  void reset_sequence(SequenceState& s);
  // Drops deferred prefetches of an abandoned evaluation (Session::clear).
  void cancel_prefetches();
  // Copies a tensor of a sequence state (rows of t.cols floats) to or from host memory, under
  // the engine's lock (the backend is driven by one thread at a time).
  void download(const Tensor& t, float* host, size_t rows);
  void upload(const float* host, const Tensor& t, size_t rows);

  // Every expert copied into backend memory at creation (a GPU backend with --gpu-mem all):
  // null when experts stream through the cache tiers.
  const ResidentExperts* resident_experts() const { return resident_.get(); }
  // The CPU's share of the expert compute (--cpu-experts): null when the CPU computes none
  // (a CPU backend, every expert resident, or --cpu-experts off).
  const HostExperts* host_experts() const { return host_experts_.get(); }
  // Whether the GPU reads RAM-tier records in place (--gpu-reads as it applies here).
  bool reads_in_place() const { return reads_in_place_; }
  // The rates --gpu-reads auto weighed (zeros when it had nothing to decide).
  const HostReadRates& host_read_rates() const { return host_read_rates_; }

 private:
  // Reads every expert record (checked like any read) into backend memory: resident_.
  void load_resident_experts();

  const Model& model_;
  EngineOptions opts_;
  int active_experts_ = 0;
  size_t context_ = 0;
  std::unique_ptr<Backend> backend_;
  ModelWeights weights_;
  Workspace ws_;
  MoeScratch moe_;
  std::unique_ptr<BackendBuffer> rope_buffer_;
  RopeTable rope_;
  std::unique_ptr<ExpertStreamer> streamer_;
  std::unique_ptr<ResidentExperts> resident_;
  std::unique_ptr<HostExperts> host_experts_;
  bool reads_in_place_ = false;  // --gpu-reads as it applies (ForwardContext::reads_in_place)
  HostReadRates host_read_rates_;
  std::vector<std::unique_ptr<BackendBuffer>> resident_buffers_;
  ForwardTimings timings_;
  std::mutex mu_;
};

}  // namespace moeflux
