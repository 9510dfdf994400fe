// Expert cache tiers of the CUDA backend: the compute tier in device memory, and the RAM tier
// in page-locked host memory (DMA at full PCIe speed, and asynchronous copies at all).
//
// Copies into the device tier run on the backend's copy stream. Three orderings matter:
//   - a slot being overwritten may still be read by compute issued earlier (an evicted record
//     of a previous layer): the first copy after a fence waits for the compute stream's work
//     issued so far (an event, not a host wait);
//   - compute must not read a record before it lands: each copy records its slot's event, which
//     copy_in returns and expert_ffn waits for on the device (compute of records that are
//     already there, or land early, overlaps the copies still running);
//   - the source RAM slot may be reused once the streamer's pins drop: the streamer calls
//     fence(), a host wait for the copy stream, before it unpins.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_check.hpp"
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
    MF_CUDA(cudaEventCreate(&window_start_));
    for (cudaEvent_t& e : landed_) MF_CUDA(cudaEventCreate(&e));  // timed: they end windows
  }
  ~DeviceTierMemory() override {
    cudaStreamSynchronize(be_.copy_stream());
    for (cudaEvent_t e : landed_) cudaEventDestroy(e);
    cudaEventDestroy(window_start_);
    cudaEventDestroy(compute_done_);
    cudaFree(arena_);
  }
  uint8_t* slot_data(size_t slot) override { return aligned_slot(arena_, slot, record_bytes_); }
  const void* copy_in(uint8_t* dst, const uint8_t* src_host, size_t bytes) override {
    if (!open_) {
      MF_CUDA(cudaEventRecord(compute_done_, be_.stream()));
      MF_CUDA(cudaStreamWaitEvent(be_.copy_stream(), compute_done_, 0));
      MF_CUDA(cudaEventRecord(window_start_, be_.copy_stream()));
      open_ = true;
    }
    MF_CUDA(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, be_.copy_stream()));
    const size_t slot = size_t(dst - slot_data(0)) / record_bytes_;
    MF_ASSERT(slot < landed_.size() && dst == slot_data(slot));
    MF_CUDA(cudaEventRecord(landed_[slot], be_.copy_stream()));
    last_ = landed_[slot];
    return last_;
  }
  void fence() override {
    if (!open_) return;
    // The copies run in order: the last one landed, all have. (An event recorded now would
    // time the fence's call, which may come long after the copies.)
    MF_CUDA(cudaEventSynchronize(last_));
    float ms = 0;
    if (cudaEventElapsedTime(&ms, window_start_, last_) == cudaSuccess)
      transfer_seconds_ += 1e-3 * double(ms);
    else
      cudaGetLastError();
    open_ = false;
  }
  double transfer_seconds() const override { return transfer_seconds_; }
  bool host_accessible() const override { return false; }
  const char* kind() const override { return "cuda"; }

 private:
  CudaBackend& be_;
  size_t record_bytes_;
  void* arena_ = nullptr;
  cudaEvent_t compute_done_ = nullptr;
  // The copy window (first copy after a fence to the last before the next) on the copy
  // stream, timed: its start, and the last copy's landing.
  cudaEvent_t window_start_ = nullptr, last_ = nullptr;
  std::vector<cudaEvent_t> landed_;  // per slot: its last copy has landed
  bool open_ = false;                // copies issued since the last fence
  double transfer_seconds_ = 0;
};

class PinnedTierMemory final : public TierMemory {
 public:
  PinnedTierMemory(size_t slots, size_t record_bytes) : record_bytes_(record_bytes) {
    const size_t bytes = slots * record_bytes + kAlign;  // room to align the base
    if (cudaHostAlloc(&arena_, bytes, cudaHostAllocPortable) != cudaSuccess) {
      cudaGetLastError();
      fail("--ram-cache: cannot allocate " + human_bytes(double(bytes)) +
           " of page-locked memory for " + std::to_string(slots) + " expert records");
    }
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

 private:
  size_t record_bytes_;
  void* arena_ = nullptr;
};

}  // namespace

std::unique_ptr<TierMemory> CudaBackend::expert_tier_memory(size_t slots, size_t record_bytes) {
  return std::make_unique<DeviceTierMemory>(*this, slots, record_bytes);
}

std::unique_ptr<TierMemory> CudaBackend::ram_tier_memory(size_t slots, size_t record_bytes) {
  return std::make_unique<PinnedTierMemory>(slots, record_bytes);
}

}  // namespace moeflux::cuda
