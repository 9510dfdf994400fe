// Hybrid expert compute (--cpu-experts, default off): with a GPU backend and experts streamed
// through the cache tiers, a layer's experts that are in neither the GPU tier nor on their way can
// be computed by the CPU straight from the RAM tier, while the GPU computes its hits and the
// records copied to it. Copying a 4-bit Qwen3-30B expert over PCIe takes as long as the CPU
// needs to stream it through its cores once, so doing both at once roughly adds the two rates.
//
// Per MoE layer of a small batch (at most kMaxRows rows): the planner splits the layer's
// RAM-tier experts between the two sides so that both finish together, by the rates it has
// measured (its estimate of each side's time is bytes / rate); the CPU's inputs (the normalised
// rows) are downloaded before any GPU expert work is issued, its outputs scattered into the
// slot rows before the combine. Prompt chunks (more rows) use the GPU only: a GEMM over an
// expert's many rows beats the CPU at any copy cost.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.hpp"

namespace moeflux {

enum class CpuExpertsMode {
  Off,   // every expert on the GPU (copied in when it is not there)
  Auto,  // the planner splits RAM-tier experts between CPU and copies by measured rates
         // (experimental: docs/PERF.md has where it helps and where it does not)
  All,   // every RAM-tier expert on the CPU (llama.cpp's --n-cpu-moe, per record)
};
CpuExpertsMode parse_cpu_experts_mode(const std::string& s);  // off|auto|all; throws Error
const char* cpu_experts_mode_name(CpuExpertsMode m);

// Where a requested record is when a layer is planned.
enum class RecordPlace : uint8_t { Gpu, Ram, Storage };

// Splits a layer's experts between the CPU and copies to the GPU, and learns the two rates.
//   copy time of a record   = record_bytes / copy_rate
//   CPU time of a layer's share = cpu_overhead + sum of record_bytes * rows / cpu_rate
//                                 (rows: batch rows using a record; the overhead is the pool's
//                                 hand-offs and the scatter of the results, paid once a layer)
// Greedy, in request order: storage misses load the GPU side first (they are read and copied
// whatever happens); each RAM-tier record then goes to the side that would finish earlier with
// it (ties to the CPU). Rates start at a guess and follow the measurements: the copy rate is an
// exponential moving average of each observation's bytes / seconds; the CPU's overhead and rate
// are a least-squares line through its recent (bytes, seconds), exponentially forgotten — a
// bare ratio would charge the overhead to the bytes, so that a small share looks slow, gets
// smaller and looks slower (measured: 28.6% on the CPU at 19 GB/s "rate" where 53 GB/s was
// true; docs/PERF.md). The CPU's first kCpuWarmup shares are not measured (they pay for first
// use), and a stalled share counts as at most 2x the model's prediction.
// A side that gets no work is not measured: once a slow reading makes the CPU lose every split,
// nothing would correct it (measured: runs that read 5-7 GB/s early on never gave the CPU work
// again; docs/PERF.md, 2026-12-04). So plan_layer() probes: after probe_interval() plans in a
// row (one per layer in decode) in which the CPU could have taken a record but got none, it gets
// one (the one of fewest rows) and is measured again; a share measured in under half the fit's
// prediction restarts the fit from it (a stale line would outlast any number of probes). The
// interval starts at kProbeFirst plans; it doubles, up to kProbeMax, after each measured probe that
// did not raise the CPU's rate, so that a CPU that really is slower costs at most one such layer in
// kProbeMax; it falls back to kProbeFirst once the CPU wins a share on its own. probe_due() tells
// the layer before, so that the CPU's pool is woken ahead (a probe on a pool asleep took ~1.5 ms on
// the GPU host, which is why an earlier probing scheme without the wake-up was dropped).
class HybridPlanner {
 public:
  explicit HybridPlanner(CpuExpertsMode mode) : mode_(mode) {}
  // Starting from given rates (bytes per second) instead of the first guesses.
  HybridPlanner(CpuExpertsMode mode, double cpu_rate, double copy_rate)
      : mode_(mode), cpu_rate_(cpu_rate), copy_rate_(copy_rate) {}
  // on_host[i] = 1 for the records the CPU computes; returns their count. Records with more
  // than kMaxRowsPerRecord rows stay on the GPU.
  size_t plan(std::span<const RecordPlace> where, std::span<const size_t> rows, size_t record_bytes,
              std::span<uint8_t> on_host) const;
  // plan(), then the probe rule above (auto mode): what a forward pass calls once per layer.
  size_t plan_layer(std::span<const RecordPlace> where, std::span<const size_t> rows,
                    size_t record_bytes, std::span<uint8_t> on_host);
  // The next plan_layer() probes if the CPU again gets no share of its own.
  bool probe_due() const {
    return mode_ == CpuExpertsMode::Auto && idle_layers_ + 1 >= probe_interval_;
  }
  size_t probe_interval() const { return probe_interval_; }
  uint64_t probes() const { return probes_; }      // CPU shares given by the probe rule
  void observe_cpu(double bytes, double seconds);  // one layer's share: its bytes x rows, time
  void observe_copy(double bytes, double seconds) { observe(copy_rate_, bytes, seconds); }
  double cpu_rate() const { return cpu_rate_; }          // bytes per second (one row)
  double cpu_overhead() const { return cpu_overhead_; }  // seconds per layer with a CPU share
  double copy_rate() const { return copy_rate_; }        // bytes per second
  CpuExpertsMode mode() const { return mode_; }

  static constexpr size_t kMaxRowsPerRecord = 2;
  static constexpr size_t kProbeFirst = 64, kProbeMax = 4096;  // layers between probes

 private:
  static void observe(double& rate, double bytes, double seconds);
  CpuExpertsMode mode_;
  double cpu_rate_ = 20e9, copy_rate_ = 25e9;  // first guesses; measured from the first layer
  double cpu_overhead_ = 0;
  static constexpr uint64_t kCpuWarmup = 8;  // CPU shares not measured, then fitted uncapped
  uint64_t cpu_shares_ = 0;                  // observe_cpu calls with something measured
  // Layers in a row in which the CPU could have taken a record but got none; the probe rule's
  // current interval; probes made.
  size_t idle_layers_ = 0, probe_interval_ = kProbeFirst;
  uint64_t probes_ = 0;
  double rate_at_probe_ = 0;  // the CPU's rate when the last probe was planned
  // Exponentially weighted sums over the CPU's observations (x = bytes, y = seconds).
  struct LineFit {
    double w = 0, x = 0, y = 0, xx = 0, xy = 0;
  } cpu_fit_;
};

// What a forward pass needs to compute experts on the CPU (owned by the Engine).
struct HostExperts {
  HostExperts(std::unique_ptr<Backend> cpu_backend, CpuExpertsMode mode, size_t hidden,
              size_t slots_per_token);
  static constexpr size_t kMaxRows = 8;  // batches of more rows: the GPU alone
  bool usable(size_t rows) const {
    return planner.mode() != CpuExpertsMode::Off && rows <= kMaxRows;
  }

  std::unique_ptr<Backend> cpu;  // a CPU backend on host memory
  HybridPlanner planner;
  size_t hidden;
  // Scratch: the batch's normalised rows, the CPU's output rows (compact), and per layer the
  // plan and the CPU's tasks with their compact and device slot rows.
  std::vector<float> x, out;
  std::unique_ptr<HostPin> x_pin;  // x page-locked by the GPU backend (pin_x)
  // x holds this layer's rows already (downloaded with the routing, see wake_pool_next).
  bool x_ready = false;
  std::vector<RecordPlace> where;
  std::vector<size_t> rows;
  std::vector<uint8_t> on_host;
  std::vector<ExpertTask> tasks;
  std::vector<int32_t> out_local, out_device;
  // Totals over the engine's life: the CPU's wall time and bytes (record bytes x rows).
  double cpu_seconds = 0, cpu_bytes = 0;
  // The last plan gave the CPU a share, or the next may probe it: the next layer wakes its pool
  // before waiting for its routing (a pool asleep between layers took up to milliseconds to
  // answer; docs/PERF.md).
  // Its rows are then also downloaded with the routing (the routing's wait covers both).
  bool wake_pool_next = false;
  // Page-locks x for `gpu` (its downloads then queue without a wait).
  void pin_x(Backend& gpu) { x_pin = gpu.pin_host(x.data(), x.size() * sizeof(float)); }
};

}  // namespace moeflux
