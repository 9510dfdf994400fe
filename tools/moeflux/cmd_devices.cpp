#include <cstdio>
#include <cstdlib>
#include <string>

#include "backend/cpu/matvec.hpp"
#include "commands.hpp"
#include "core/error.hpp"
#ifdef MOEFLUX_HAVE_CUDA
#include "backend/cuda/cuda_backend.hpp"
#include "backend/cuda/cuda_device.hpp"
#endif

namespace moeflux::tool {

namespace {

Runner add_devices(CLI::App& app) {
  app.add_subcommand("devices", "List the compute backends and devices this build can use");
  return [] {
    std::printf("cpu   %u threads, kernels: %s\n", std::thread::hardware_concurrency(),
                cpu::matvec_isa());
#ifdef MOEFLUX_HAVE_CUDA
    std::string why;
    const auto devs = cuda::list_devices(&why);
    if (devs.empty()) std::printf("cuda  built in; no device (%s)\n", why.c_str());
    for (const auto& d : devs) {
      std::printf("cuda  %d: %s, sm_%d%d, %d SMs, %s\n", d.index, d.name.c_str(), d.sm_major,
                  d.sm_minor, d.multiprocessors, human_bytes(double(d.total_bytes)).c_str());
      // What --gpu-reads auto weighs: how fast this GPU reads page-locked host memory.
      try {
        const HostReadRates r = cuda::make_backend({d.index})->host_read_rates();
        if (r.copy > 0)
          std::printf(
              "      host memory reads: copy engine %.1f GB/s, kernels in place %.1f GB/s "
              "(%.2fx)\n",
              r.copy / 1e9, r.in_place / 1e9, r.in_place / r.copy);
      } catch (const Error& e) {
        std::printf("      host memory reads: not measured (%s)\n", e.what());
      }
    }
    const bool gpu = cuda::device_available();
#else
    std::printf("cuda  not built (configure with -DMOEFLUX_CUDA=ON where nvcc exists)\n");
    const bool gpu = false;
#endif
    const char* env = std::getenv("MOEFLUX_BACKEND");
    const std::string chosen = env && *env ? env : "auto";
    std::printf("backend: %s%s -> %s\n", chosen.c_str(),
                env && *env ? " (MOEFLUX_BACKEND)" : " (default)",
                chosen == "auto" ? (gpu ? "cuda" : "cpu") : chosen.c_str());
    return 0;
  };
}

const CommandRegistration registration(90, add_devices);

}  // namespace

}  // namespace moeflux::tool
