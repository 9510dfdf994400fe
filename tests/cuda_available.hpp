// Why the CUDA tests cannot run here ("" when they can): a build without the CUDA backend, or a
// machine without a GPU (CI). The GPU machine runs them (bench/device/cuda.sh).
#pragma once

#include <string>

#ifdef MOEFLUX_HAVE_CUDA
#include "backend/cuda/cuda_backend.hpp"
#endif

namespace moeflux::test {

inline std::string why_no_cuda() {
#ifndef MOEFLUX_HAVE_CUDA
  return "built without the CUDA backend (-DMOEFLUX_CUDA=OFF)";
#else
  if (!cuda::device_available())
    return "no CUDA device here; the GPU machine runs these (bench/device/cuda.sh)";
  return "";
#endif
}

}  // namespace moeflux::test
