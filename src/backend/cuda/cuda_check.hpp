// Error handling of CUDA runtime calls: a failed call becomes a moeflux::Error naming the call
// and the runtime's message (an out-of-memory names what was being allocated).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/error.hpp"

namespace moeflux::cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail(std::string("CUDA: ") + what + ": " + cudaGetErrorString(err));
}

}  // namespace moeflux::cuda

#define MF_CUDA(call) ::moeflux::cuda::check((call), #call)
