// CudaBackend::argmax_rows and top_k_rows: the greedy pick and the sampler's k best over each
// row of logits on the device, so that picking a token does not need the vocabulary's logits on
// the host.
//
// Every value v at index i gets a 64-bit key ordered as (v, then the lower index):
//   high half: v's bits made monotonic (negative: every bit flipped; else the sign bit set),
//   low half:  0xffffffff - i,
// with -0 taken as +0 (they compare equal, so the lower index must win). Keys are unique and
// never 0 (-inf's high half is 0x007fffff), so 0 can mark "nothing".
//
// argmax: the largest key is the row's largest value at its lowest index, core/argmax.hpp's
// answer. NaN gets no key; a row's key starts at 0, so 0 means "every value NaN": index 0, as on
// the CPU. Each block reduces its keys in registers and shuffles, then takes the maximum with the
// row's key (atomicMax: the order of the blocks does not matter); a block that saw a value that
// is not finite sets the row's flag (atomicOr).
//
// top-k (NaN ranks as -inf: its key is -inf's at its index): each block sorts the keys of a
// chunk of kTopKChunk values in shared memory (bitonic, descending; past the row, key 0) and
// writes its k largest; the host takes the k largest of those blocks x k candidates. The k best
// of the row are among them (each is among the k best of its own chunk), and keys are unique, so
// the answer does not depend on the order of anything: core/top_k.hpp's, exactly.
#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "core/finite.hpp"

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

constexpr int kTopKChunk = 2048, kTopKThreads = 512;
constexpr size_t kMaxDeviceTopK = 256;  // larger k: the rows are read on the host

// blockIdx = (chunk, row): the chunk's k largest keys to best[(row * chunks + chunk) * k + j].
__global__ void __launch_bounds__(kTopKThreads)
    top_k_chunk_kernel(const float* x, size_t pitch, int n, int k, unsigned long long* best,
                       int* not_finite) {
  await_inputs();
  __shared__ unsigned long long keys[kTopKChunk];
  const float* row = x + blockIdx.y * pitch;
  const int base = blockIdx.x * kTopKChunk;
  bool bad = false;
  for (int j = threadIdx.x; j < kTopKChunk; j += blockDim.x) {
    const int i = base + j;
    unsigned long long key = 0;  // past the row: below every value
    if (i < n) {
      const float v = row[i];
      bad |= !isfinite(v);
      key = order_key(v == v ? v : -INFINITY, static_cast<uint32_t>(i));
    }
    keys[j] = key;
  }
  // A barrier too: every key is in place before the sort.
  if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(not_finite + blockIdx.y, 1);
  // Bitonic sort, descending: for each merge size, pairs (a, a + stride) with bit `stride` of a
  // clear are put in order, descending where bit `size` of a is clear (all of them at the last
  // size), ascending elsewhere.
  for (int size = 2; size <= kTopKChunk; size *= 2)
    for (int stride = size / 2; stride > 0; stride /= 2) {
      for (int p = threadIdx.x; p < kTopKChunk / 2; p += blockDim.x) {
        const int a = 2 * p - (p & (stride - 1)), b = a + stride;
        const bool descending = (a & size) == 0;
        const unsigned long long ka = keys[a], kb = keys[b];
        if ((ka < kb) == descending) {
          keys[a] = kb;
          keys[b] = ka;
        }
      }
      __syncthreads();
    }
  unsigned long long* out = best + (size_t(blockIdx.y) * gridDim.x + blockIdx.x) * k;
  for (int j = threadIdx.x; j < k; j += blockDim.x) out[j] = keys[j];
}

// The value and index of a key (inverse of order_key; -0 comes back as +0).
TopEntry entry_of(unsigned long long key) {
  const uint32_t m = uint32_t(key >> 32);
  const uint32_t b = (m & 0x80000000u) ? (m & 0x7fffffffu) : ~m;
  float v;
  std::memcpy(&v, &b, sizeof v);
  return {static_cast<int>(0xffffffffu - uint32_t(key)), v};
}

}  // namespace

void* CudaBackend::pick_host(size_t bytes) {
  if (bytes > pick_host_bytes_) {
    cudaFreeHost(pick_host_);  // no copy into it is pending: every pick waits for its own
    pick_host_ = nullptr;
    pick_host_bytes_ = 0;
    const size_t n = std::max<size_t>(bytes, 64 * 1024);
    MF_CUDA(cudaMallocHost(&pick_host_, n));
    pick_host_bytes_ = n;
  }
  return pick_host_;
}

void CudaBackend::top_k_rows(const Tensor& x, size_t k, std::span<TopEntry> best,
                             std::span<uint8_t> finite) {
  const OpTimer timer(*this, "top_k");
  MF_ASSERT(x.rank == 2 && x.memory == Memory::Device && finite.size() == x.rows());
  const size_t R = x.rows(), n = x.shape[1];
  MF_ASSERT(k > 0 && k <= n && best.size() == R * k);
  MF_ASSERT(n <= size_t(std::numeric_limits<int>::max()));  // the kernel counts in int
  if (R == 0) return;
  if (k > kMaxDeviceTopK) {  // a sort per chunk would not hold its k: the host selects
    thread_local std::vector<float> row;
    thread_local std::vector<TopEntry> row_best;
    row.resize(n);
    for (size_t r = 0; r < R; ++r) {
      download(x.rows_view(r, 1), row.data(), n);
      top_k(row, k, row_best);
      std::copy(row_best.begin(), row_best.end(), best.begin() + r * k);
      finite[r] = all_finite(row) ? 1 : 0;
    }
    return;
  }
  const size_t chunks = (n + kTopKChunk - 1) / kTopKChunk, per_row = chunks * k;
  // Device scratch: [candidates: R per_row 64-bit keys | flags: R ints].
  const size_t key_bytes = R * per_row * sizeof(unsigned long long);
  auto* keys = static_cast<unsigned long long*>(pick_scratch_.get(key_bytes + R * 4, stream_));
  auto* flags = reinterpret_cast<int*>(keys + R * per_row);
  MF_CUDA(cudaMemsetAsync(flags, 0, R * 4, stream_));
  top_k_chunk_kernel<<<dim3(unsigned(chunks), unsigned(R)), kTopKThreads, 0, stream_>>>(
      x.f32(), x.pitch(), int(n), int(k), keys, flags);
  check_launch("top-k");
  auto* host = static_cast<unsigned long long*>(pick_host(key_bytes + R * 4));
  MF_CUDA(cudaMemcpyAsync(host, keys, key_bytes + R * 4, cudaMemcpyDeviceToHost, stream_));
  MF_CUDA(cudaStreamSynchronize(stream_));
  const auto* host_flags = reinterpret_cast<const int*>(host + R * per_row);
  for (size_t r = 0; r < R; ++r) {
    // The k largest candidates (the padding keys, 0, rank last and k <= n real keys exist).
    unsigned long long* const first = host + r * per_row;
    unsigned long long *const kth = first + k, *const last = first + per_row;
    std::nth_element(first, kth - 1, last, std::greater<>());
    std::sort(first, kth, std::greater<>());
    for (size_t i = 0; i < k; ++i) best[r * k + i] = entry_of(first[i]);
    finite[r] = host_flags[r] == 0 ? 1 : 0;
  }
}

void CudaBackend::argmax_rows(const Tensor& x, std::span<int32_t> out, std::span<uint8_t> finite) {
  const OpTimer timer(*this, "argmax");
  MF_ASSERT(x.rank == 2 && x.memory == Memory::Device && out.size() == x.rows() &&
            finite.size() == x.rows());
  const size_t R = x.rows(), n = x.shape[1];
  if (R == 0) return;
  MF_ASSERT(n > 0 && n <= size_t(std::numeric_limits<int>::max()));  // the kernel counts in int
  // Device scratch: [keys: R 64-bit | flags: R ints], zeroed.
  auto* keys = static_cast<unsigned long long*>(pick_scratch_.get(R * 12, stream_));
  auto* flags = reinterpret_cast<int*>(keys + R);
  MF_CUDA(cudaMemsetAsync(keys, 0, R * 12, stream_));
  // About four values a thread, at most two blocks per SM of an H100-sized GPU.
  const unsigned blocks = std::min(blocks_for(n, 4 * kArgmaxThreads), 264u);
  argmax_kernel<<<dim3(blocks, unsigned(R)), kArgmaxThreads, 0, stream_>>>(x.f32(), x.pitch(),
                                                                           int(n), keys, flags);
  check_launch("argmax");
  auto* host = static_cast<unsigned long long*>(pick_host(R * 12));  // keys, then the flags
  MF_CUDA(cudaMemcpyAsync(host, keys, R * 12, cudaMemcpyDeviceToHost, stream_));
  MF_CUDA(cudaStreamSynchronize(stream_));
  const auto* host_flags = reinterpret_cast<const int*>(host + R);
  for (size_t r = 0; r < R; ++r) {
    out[r] = host[r] == 0 ? 0 : static_cast<int32_t>(0xffffffffu - uint32_t(host[r]));
    finite[r] = host_flags[r] == 0 ? 1 : 0;
  }
}

}  // namespace moeflux::cuda
