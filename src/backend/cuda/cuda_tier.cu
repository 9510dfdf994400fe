// Expert cache tiers of the CUDA backend: the compute tier in device memory, and the RAM tier
// in page-locked host memory (DMA at full PCIe speed, and asynchronous copies at all).
//
// Copies into the device tier run on the backend's copy stream, in windows (TierMemory). Three
// orderings matter:
//   - a slot being overwritten may still be read by compute issued earlier (an evicted record
//     of a previous layer): a window's first copy waits for the compute stream's work issued so
//     far (an event, not a host wait);
//   - compute must not read a record before it lands: each copy records its slot's event, which
//     copy_in returns and expert_ffn waits for on the device (compute of records that are
//     already there, or land early, overlaps the copies still running);
//   - the source RAM slot may be reused once its window has landed: each window ends with an
//     event of its own, which landed() queries and fence() waits for; the streamer keeps the
//     sources pinned until then, so the host never waits for copies in the decode loop;
//   - a RAM slot that kernels read in place (the RAM tier is mapped into the GPU's address
//     space) may be reused once those kernels have finished: close_reads() ends a window whose
//     start waits for the compute stream, so its landing says so, in the same order as copies.
#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/read_kernel.cuh"
#include "core/human_bytes.hpp"

namespace moeflux::cuda {

namespace {

// Slots are 4096-aligned (the cache tiers' invariant; O_DIRECT reads land in RAM-tier slots):
// arenas are allocated kAlign bytes larger and slot 0 starts at the first aligned address.
constexpr size_t kAlign = 4096;
uint8_t* aligned_slot(void* arena, size_t slot, size_t record_bytes) {
  const uintptr_t base = (reinterpret_cast<uintptr_t>(arena) + kAlign - 1) / kAlign * kAlign;
  return reinterpret_cast<uint8_t*>(base) + slot * record_bytes;
}

class DeviceTierMemory final : public TierMemory {
 public:
  DeviceTierMemory(CudaBackend& be, size_t slots, size_t record_bytes)
      : be_(be), record_bytes_(record_bytes), landed_(slots) {
    const size_t bytes = slots * record_bytes + kAlign;
    if (cudaMalloc(&arena_, bytes) != cudaSuccess) {
      cudaGetLastError();
      fail("GPU expert cache: cannot allocate " + human_bytes(double(bytes)) + " for " +
           std::to_string(slots) + " expert records (lower --gpu-mem)");
    }
    MF_CUDA(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming));
    MF_CUDA(cudaEventCreate(&reads_start_));
    for (cudaEvent_t& e : landed_) MF_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    for (Window& w : windows_) {  // timed: they measure the copies' device time
      MF_CUDA(cudaEventCreate(&w.start));
      MF_CUDA(cudaEventCreate(&w.end));
      MF_CUDA(cudaEventCreate(&w.read_start));
    }
  }
  ~DeviceTierMemory() override {
    cudaStreamSynchronize(be_.copy_stream());
    for (cudaEvent_t e : landed_) cudaEventDestroy(e);
    for (Window& w : windows_) {
      cudaEventDestroy(w.start);
      cudaEventDestroy(w.end);
      cudaEventDestroy(w.read_start);
    }
    cudaEventDestroy(reads_start_);
    cudaEventDestroy(compute_done_);
    cudaFree(arena_);
  }
  uint8_t* slot_data(size_t slot) override { return aligned_slot(arena_, slot, record_bytes_); }
  const void* copy_in(uint8_t* dst, const uint8_t* src_host, size_t bytes) override {
    if (!open_) open_window();
    MF_CUDA(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, be_.copy_stream()));
    const size_t slot = size_t(dst - slot_data(0)) / record_bytes_;
    MF_ASSERT(slot < landed_.size() && dst == slot_data(slot));
    MF_CUDA(cudaEventRecord(landed_[slot], be_.copy_stream()));
    window(closed_ + 1).bytes += double(bytes);
    return landed_[slot];
  }
  void open_reads() override { MF_CUDA(cudaEventRecord(reads_start_, be_.stream())); }
  uint64_t close_reads(double bytes) override {
    close_window();
    open_window();  // its start waits for the compute stream's work issued so far
    Window& w = window(closed_ + 1);
    std::swap(w.read_start, reads_start_);  // the window times the reads from open_reads()
    w.read_bytes = bytes;
    return close_window();
  }
  uint64_t close_window() override {
    if (!open_) return 0;
    MF_CUDA(cudaEventRecord(window(closed_ + 1).end, be_.copy_stream()));
    open_ = false;
    return ++closed_;
  }
  bool landed(uint64_t id) override {
    MF_ASSERT(id <= closed_);
    while (harvested_ < id) {
      const cudaError_t q = cudaEventQuery(window(harvested_ + 1).end);
      if (q == cudaErrorNotReady) return false;
      MF_CUDA(q);
      harvest();
    }
    return true;
  }
  void fence() override {
    close_window();
    if (harvested_ < closed_) MF_CUDA(cudaEventSynchronize(window(closed_).end));
    while (harvested_ < closed_) harvest();  // in stream order: the last landed, all have
  }
  Transferred take_transferred() override { return std::exchange(transferred_, Transferred{}); }
  bool host_accessible() const override { return false; }
  const char* kind() const override { return "cuda"; }

 private:
  // A copy window on the copy stream, timed: its start, and its end (after its last copy). A
  // window of close_reads() also times the compute that read in place: from read_start (on the
  // compute stream, at open_reads) to its end.
  struct Window {
    cudaEvent_t start = nullptr, end = nullptr, read_start = nullptr;
    double bytes = 0, read_bytes = 0;
  };
  Window& window(uint64_t id) { return windows_[id % windows_.size()]; }

  void open_window() {
    // Its ring entry is reused: an old window not yet harvested has long landed; wait anyway.
    if (closed_ + 1 - harvested_ > windows_.size()) {
      MF_CUDA(cudaEventSynchronize(window(harvested_ + 1).end));
      harvest();
    }
    MF_CUDA(cudaEventRecord(compute_done_, be_.stream()));
    MF_CUDA(cudaStreamWaitEvent(be_.copy_stream(), compute_done_, 0));
    Window& w = window(closed_ + 1);
    MF_CUDA(cudaEventRecord(w.start, be_.copy_stream()));
    w.bytes = 0;
    w.read_bytes = 0;
    open_ = true;
  }
  // Counts the oldest window not yet harvested, which has landed.
  void harvest() {
    Window& w = window(++harvested_);
    float ms = 0;
    if (cudaEventElapsedTime(&ms, w.start, w.end) == cudaSuccess) {
      transferred_.bytes += w.bytes;
      transferred_.seconds += 1e-3 * double(ms);
    } else {
      cudaGetLastError();
    }
    if (w.read_bytes > 0 && cudaEventElapsedTime(&ms, w.read_start, w.end) == cudaSuccess) {
      transferred_.read_bytes += w.read_bytes;
      transferred_.read_seconds += 1e-3 * double(ms);
    } else {
      cudaGetLastError();
    }
  }

  CudaBackend& be_;
  size_t record_bytes_;
  void* arena_ = nullptr;
  cudaEvent_t compute_done_ = nullptr;
  cudaEvent_t reads_start_ = nullptr;  // open_reads(); swapped into the next reads window
  std::vector<cudaEvent_t> landed_;    // per slot: its last copy has landed
  std::array<Window, 64> windows_;     // window id i at windows_[i % 64]
  uint64_t closed_ = 0;                // windows closed: ids 1..closed_
  uint64_t harvested_ = 0;             // windows known landed and counted: ids 1..harvested_
  bool open_ = false;                  // window closed_ + 1 has copies
  Transferred transferred_;            // harvested since take_transferred()
};

class PinnedTierMemory final : public TierMemory {
 public:
  PinnedTierMemory(size_t slots, size_t record_bytes) : record_bytes_(record_bytes) {
    const size_t bytes = slots * record_bytes + kAlign;  // room to align the base
    if (cudaHostAlloc(&arena_, bytes, cudaHostAllocPortable | cudaHostAllocMapped) != cudaSuccess) {
      cudaGetLastError();
      fail("--ram-cache: cannot allocate " + human_bytes(double(bytes)) +
           " of page-locked memory for " + std::to_string(slots) + " expert records");
    }
    // Mapped into the GPU's address space; with unified addressing at the same address, so
    // that kernels can read a record in place through the pointer the host has.
    void* dev = nullptr;
    device_readable_ = cudaHostGetDevicePointer(&dev, arena_, 0) == cudaSuccess && dev == arena_;
    cudaGetLastError();
  }
  ~PinnedTierMemory() override { cudaFreeHost(arena_); }
  uint8_t* slot_data(size_t slot) override { return aligned_slot(arena_, slot, record_bytes_); }
  const void* copy_in(uint8_t* dst, const uint8_t* src_host, size_t bytes) override {
    std::memcpy(dst, src_host, bytes);
    return nullptr;
  }
  void fence() override {}
  bool host_accessible() const override { return true; }
  const char* kind() const override { return "pinned"; }
  bool device_readable() const override { return device_readable_; }

 private:
  size_t record_bytes_;
  void* arena_ = nullptr;
  bool device_readable_ = false;
};

}  // namespace

HostReadRates CudaBackend::host_read_rates() {
  if (host_read_rates_) return *host_read_rates_;
  // 64 MiB, page-locked and mapped as the RAM tier is, read 3 times each way after a warm-up
  // (the median): ~10 ms. Larger than the GPU's L2, so that kernels read across the bus.
  constexpr size_t kBytes = size_t(64) << 20;
  constexpr int kRuns = 3;
  host_read_rates_ = HostReadRates{};
  // The scratch buffers, stream and events, released however the measurement ends.
  struct Scratch {
    void* host = nullptr;
    void* dev = nullptr;
    cudaStream_t s = nullptr;
    cudaEvent_t a = nullptr, b = nullptr;
    ~Scratch() {
      if (s) cudaStreamSynchronize(s);
      if (a) cudaEventDestroy(a);
      if (b) cudaEventDestroy(b);
      if (s) cudaStreamDestroy(s);
      if (dev) cudaFree(dev);
      if (host) cudaFreeHost(host);
    }
  } m;
  if (cudaHostAlloc(&m.host, kBytes, cudaHostAllocPortable | cudaHostAllocMapped) != cudaSuccess) {
    cudaGetLastError();
    return *host_read_rates_;  // not measured: zeros
  }
  void* const host = m.host;
  std::memset(host, 0x5a, kBytes);
  void* mapped = nullptr;
  const bool readable = cudaHostGetDevicePointer(&mapped, host, 0) == cudaSuccess;
  cudaGetLastError();
  MF_CUDA(cudaMalloc(&m.dev, kBytes + sizeof(uint32_t)));
  void* const dev = m.dev;
  uint32_t* const sink = reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(dev) + kBytes);
  MF_CUDA(cudaStreamCreateWithFlags(&m.s, cudaStreamNonBlocking));
  MF_CUDA(cudaEventCreate(&m.a));
  MF_CUDA(cudaEventCreate(&m.b));
  const cudaStream_t s = m.s;
  const cudaEvent_t a = m.a, b = m.b;
  int sms = 0;
  MF_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_));
  // Bytes per second of `issue` (its work on s), the median of kRuns after a warm-up.
  auto rate = [&](auto issue) {
    std::array<double, kRuns> r{};
    issue();
    for (double& x : r) {
      MF_CUDA(cudaEventRecord(a, s));
      issue();
      MF_CUDA(cudaEventRecord(b, s));
      MF_CUDA(cudaEventSynchronize(b));
      float ms = 0;
      MF_CUDA(cudaEventElapsedTime(&ms, a, b));
      x = ms > 0 ? double(kBytes) / (double(ms) * 1e-3) : 0.0;
    }
    std::sort(r.begin(), r.end());
    return r[kRuns / 2];
  };
  HostReadRates out;
  out.copy = rate([&] { MF_CUDA(cudaMemcpyAsync(dev, host, kBytes, cudaMemcpyHostToDevice, s)); });
  if (readable)
    out.in_place = rate([&] {
      read_kernel<4><<<4 * sms, 256, 0, s>>>(static_cast<const uint4*>(mapped), kBytes / 16, sink);
      check_launch("read_host");
    });
  MF_CUDA(cudaStreamSynchronize(s));
  host_read_rates_ = out;
  return out;
}

std::unique_ptr<TierMemory> CudaBackend::expert_tier_memory(size_t slots, size_t record_bytes) {
  return std::make_unique<DeviceTierMemory>(*this, slots, record_bytes);
}

std::unique_ptr<TierMemory> CudaBackend::ram_tier_memory(size_t slots, size_t record_bytes) {
  return std::make_unique<PinnedTierMemory>(slots, record_bytes);
}

}  // namespace moeflux::cuda
