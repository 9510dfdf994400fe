// The CUDA backend's factory: a plain C++ header (no CUDA headers), so that the engine and the
// tools can create the backend without being compiled by nvcc.
#pragma once

#include <memory>

#include "backend/backend.hpp"

namespace moeflux::cuda {

struct CudaOptions {
  int device = 0;  // CUDA device index
};

// A backend on one GPU: its tensors and resident weights in device memory, ops issued on one
// compute stream, expert records copied in on a copy stream. Throws moeflux::Error when the
// device cannot be used.
std::unique_ptr<Backend> make_backend(const CudaOptions& opts);

// True when the runtime sees at least one device (for `--backend auto`).
bool device_available();

}  // namespace moeflux::cuda
