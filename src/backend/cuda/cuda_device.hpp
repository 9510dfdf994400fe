// The CUDA backend's entry point. Kernels arrive with the CUDA backend issue; for now this
// reports the devices the runtime sees so `moeflux devices` can show them.
#pragma once

#include <string>
#include <vector>

namespace moeflux::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  size_t total_bytes = 0;  // global memory, bytes
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
};

// Devices visible to the CUDA runtime; empty (not an error) when there is no driver or GPU.
std::vector<DeviceInfo> list_devices(std::string* why_none = nullptr);

}  // namespace moeflux::cuda
