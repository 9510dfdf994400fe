// A kernel that reads memory and nothing else, to time how fast the GPU reads it where it lies
// (page-locked host memory across the bus, or device memory): CudaBackend::host_read_rates and
// moeflux_pcie_bench.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moeflux::cuda {

// Reads n16 16-byte words at p, grid-stride, U loads in flight a thread, and folds them into a
// word written to *sink only when it equals an unlikely value (practically never: it keeps the
// loads from being removed).
template <int U>
__global__ void read_kernel(const uint4* p, size_t n16, uint32_t* sink) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + (U - 1) * stride < n16; i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = p[i + u * stride];
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n16; i += stride) acc ^= p[i].x ^ p[i].w;
  if (acc == 0x9e3779b9u) *sink = acc;
}

}  // namespace moeflux::cuda
