// CudaBackend::argmax_rows: the greedy pick over each row of logits on the device, so that
// picking a token does not need the vocabulary's logits on the host.
//
// Every value v at index i gets a 64-bit key ordered as (v, then the lower index):
//   high half: v's bits made monotonic (negative: every bit flipped; else the sign bit set),
//   low half:  0xffffffff - i,
// with -0 taken as +0 (they compare equal, so the lower index must win). The largest key is the
// row's largest value at its lowest index: core/argmax.hpp's answer. NaN gets no key; a row's key
// starts at 0, which no value's key is (-inf's is 0x007fffff...), so 0 means "every value NaN":
// index 0, as on the CPU. Each block reduces its keys in registers and shuffles, then takes the
// maximum with the row's key (atomicMax: the order of the blocks does not matter); a block that
// saw a value that is not finite sets the row's flag (atomicOr).
#include <algorithm>
#include <limits>
#include <vector>

#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_check.hpp"

namespace moeflux::cuda {

namespace {

constexpr int kArgmaxThreads = 256;

__device__ __forceinline__ unsigned long long order_key(float v, uint32_t i) {
  if (v == 0.0f) v = 0.0f;  // -0 as +0
  const uint32_t b = __float_as_uint(v);
  const uint32_t m = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<unsigned long long>(m) << 32) | (0xffffffffu - i);
}

__device__ __forceinline__ unsigned long long max_key(unsigned long long a, unsigned long long b) {
  return a > b ? a : b;
}

// blockIdx.y = row; blocks stride over its n values.
__global__ void argmax_kernel(const float* x, size_t pitch, int n, unsigned long long* keys,
                              int* not_finite) {
  await_inputs();
  const float* row = x + blockIdx.y * pitch;
  unsigned long long best = 0;
  bool bad = false;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const float v = row[i];
    bad |= !isfinite(v);
    if (v == v) best = max_key(best, order_key(v, static_cast<uint32_t>(i)));  // NaN: no key
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(not_finite + blockIdx.y, 1);
  for (int o = 16; o > 0; o /= 2) best = max_key(best, __shfl_xor_sync(0xffffffffu, best, o));
  __shared__ unsigned long long warp_best[kArgmaxThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  if (warp != 0) return;
  best = lane < kArgmaxThreads / 32 ? warp_best[lane] : 0;
  for (int o = 16; o > 0; o /= 2) best = max_key(best, __shfl_xor_sync(0xffffffffu, best, o));
  if (lane == 0 && best != 0) atomicMax(keys + blockIdx.y, best);
}

}  // namespace

void CudaBackend::argmax_rows(const Tensor& x, std::span<int32_t> out, std::span<uint8_t> finite) {
  const OpTimer timer(*this, "argmax");
  MF_ASSERT(x.rank == 2 && x.memory == Memory::Device && out.size() == x.rows() &&
            finite.size() == x.rows());
  const size_t R = x.rows(), n = x.shape[1];
  if (R == 0) return;
  MF_ASSERT(n > 0 && n <= size_t(std::numeric_limits<int>::max()));  // the kernel counts in int
  // Device scratch: [keys: R 64-bit | flags: R ints], zeroed.
  auto* keys = static_cast<unsigned long long*>(argmax_scratch_.get(R * 12, stream_));
  auto* flags = reinterpret_cast<int*>(keys + R);
  MF_CUDA(cudaMemsetAsync(keys, 0, R * 12, stream_));
  // About four values a thread, at most two blocks per SM of an H100-sized GPU.
  const unsigned blocks = std::min(blocks_for(n, 4 * kArgmaxThreads), 264u);
  argmax_kernel<<<dim3(blocks, unsigned(R)), kArgmaxThreads, 0, stream_>>>(x.f32(), x.pitch(),
                                                                           int(n), keys, flags);
  check_launch("argmax");
  thread_local std::vector<unsigned long long> host;  // keys, then the flags' bytes
  host.resize(R + (R * 4 + 7) / 8);
  MF_CUDA(cudaMemcpyAsync(host.data(), keys, R * 12, cudaMemcpyDeviceToHost, stream_));
  MF_CUDA(cudaStreamSynchronize(stream_));
  const auto* host_flags = reinterpret_cast<const int*>(host.data() + R);
  for (size_t r = 0; r < R; ++r) {
    out[r] = host[r] == 0 ? 0 : static_cast<int32_t>(0xffffffffu - uint32_t(host[r]));
    finite[r] = host_flags[r] == 0 ? 1 : 0;
  }
}

}  // namespace moeflux::cuda
