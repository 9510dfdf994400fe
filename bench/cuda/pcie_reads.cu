// moeflux_pcie_bench: how fast a kernel reads page-locked host memory across PCIe where it lies
// ("zero-copy": the device address of a mapped host buffer), against the copy engine moving the
// same bytes (cudaMemcpyAsync) and against HBM.
//
// The question it answers: could the expert kernels read the RAM tier's records in place instead
// of copying them into GPU slots first? Then a layer's misses would need no round trip through
// the host (the router's ids stay on the device and the kernels take each expert's address from
// a table), and a streamed decode step could be recorded like a resident one. That pays only if
// a kernel's reads reach the copy engine's rate (55.4 GB/s on the GPU host) with the access
// pattern of the matrix-vector kernels: each warp reads 512 contiguous bytes of a row per step,
// 16 bytes a lane.
//
// Prints one line per measurement: its name, MiB moved, GB/s (median of kRepeats), and the
// ratio to the copy engine. Run by bench/device/cuda.sh PCIE=1.
//
// Last, the host's memory as the shared resource of hybrid decode (--cpu-experts): CPU threads
// streaming host memory alone, then while the GPU reads other host memory in place. At
// --gpu-mem 0 every expert byte of a token leaves host DRAM, by the CPU or across the bus, so
// the two rates measured together bound that setting's decode from above.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "backend/cuda/read_kernel.cuh"

namespace {

using moeflux::cuda::read_kernel;

constexpr int kRepeats = 5;
constexpr size_t kMiB = size_t(1) << 20;

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "moeflux_pcie_bench: %s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

// Expert records at scattered offsets, read as the matrix-vector kernels read a row: block b
// takes rows of `row_bytes` in turn (rows of all records, record by record), each warp a row,
// 16 bytes a lane, 512 bytes a step; every record's rows are contiguous.
__global__ void records_kernel(const uint8_t* base, const size_t* offsets, int records,
                               size_t record_bytes, size_t row_bytes, uint32_t* sink) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const size_t rows_per_record = record_bytes / row_bytes;
  const size_t rows = rows_per_record * records;
  uint32_t acc = 0;
  for (size_t r = size_t(blockIdx.x) * warps + warp; r < rows; r += size_t(gridDim.x) * warps) {
    const uint8_t* row = base + offsets[r / rows_per_record] + (r % rows_per_record) * row_bytes;
    uint4 v[4];
    const size_t steps = row_bytes / 512;
    for (size_t s0 = 0; s0 < steps; s0 += 4) {
#pragma unroll
      for (int u = 0; u < 4; ++u)
        v[u] = s0 + u < steps ? *reinterpret_cast<const uint4*>(row + (s0 + u) * 512 + lane * 16)
                              : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].w;
    }
  }
  if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;
}

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    check(cudaEventCreate(&a), "event");
    check(cudaEventCreate(&b), "event");
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
};

// Median GB/s of `run` (which issues its work on s between the events), `bytes` per run.
template <class F>
double median_gbs(cudaStream_t s, size_t bytes, F run) {
  Timer t;
  std::vector<double> gbs;
  run();  // warm-up: first-touch mappings, module load
  check(cudaStreamSynchronize(s), "warm-up");
  for (int r = 0; r < kRepeats; ++r) {
    check(cudaEventRecord(t.a, s), "record");
    run();
    check(cudaEventRecord(t.b, s), "record");
    check(cudaEventSynchronize(t.b), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, t.a, t.b), "elapsed");
    gbs.push_back(double(bytes) / (ms * 1e-3) / 1e9);
  }
  std::sort(gbs.begin(), gbs.end());
  return gbs[gbs.size() / 2];
}

void report(const char* what, size_t bytes, double gbs, double copy_gbs) {
  std::printf("%-44s %8.0f MiB %8.1f GB/s %6.2fx copy\n", what, double(bytes) / kMiB, gbs,
              copy_gbs > 0 ? gbs / copy_gbs : 1.0);
  std::fflush(stdout);
}

// CPU threads reading `bytes` of host memory (each its own contiguous slice, over and over)
// until `stop`; returns the bytes read. Eight 64-bit lanes a step (the compiler vectorizes the
// loop), folded into a value that is published so that the loads stay.
struct CpuReaders {
  CpuReaders(const uint8_t* p, size_t bytes, int threads) : p_(p), bytes_(bytes) {
    for (int t = 0; t < threads; ++t)
      threads_.emplace_back([this, t, threads] { run(t, threads); });
  }
  // Joins the readers; their total bytes and wall seconds (from construction).
  std::pair<double, double> finish() {
    stop_.store(true, std::memory_order_relaxed);
    for (auto& t : threads_) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    return {double(read_.load()), s};
  }

 private:
  void run(int t, int threads) {
    const size_t slice = bytes_ / threads / 64 * 64;
    const uint64_t* w = reinterpret_cast<const uint64_t*>(p_ + t * slice);
    const size_t words = slice / 8;
    uint64_t acc[8] = {};
    size_t done = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      for (size_t i = 0; i < words; i += 8)
        for (int l = 0; l < 8; ++l) acc[l] += w[i + l];
      done += slice;
    }
    uint64_t a = 0;
    for (uint64_t v : acc) a ^= v;
    sink_.fetch_xor(a);
    read_.fetch_add(done);
  }
  const uint8_t* p_;
  size_t bytes_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> read_{0}, sink_{0};
  const std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
  std::vector<std::thread> threads_;
};

}  // namespace

int main() {
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "attribute");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "properties");
  std::printf("device: %s, %d SMs\n", prop.name, sms);

  // One page-locked, mapped host buffer: 256 MiB read sequentially, and a 2 GiB span the
  // records are scattered over (larger than any cache on the way).
  const size_t seq_bytes = 256 * kMiB, span = 2048 * kMiB;
  uint8_t* host = nullptr;
  check(cudaHostAlloc(&host, span, cudaHostAllocMapped), "cudaHostAlloc (2 GiB, mapped)");
  std::mt19937_64 rng(7);
  for (size_t i = 0; i < span; i += 8) *reinterpret_cast<uint64_t*>(host + i) = rng();
  uint8_t* host_dev = nullptr;  // the device's address of the same bytes
  check(cudaHostGetDevicePointer(reinterpret_cast<void**>(&host_dev), host, 0), "device pointer");
  uint8_t *dev = nullptr, *dev2 = nullptr;
  check(cudaMalloc(&dev, span), "cudaMalloc");
  check(cudaMalloc(&dev2, seq_bytes), "cudaMalloc");
  check(cudaMemcpy(dev, host, span, cudaMemcpyHostToDevice), "fill");
  uint32_t* sink = nullptr;
  check(cudaMalloc(&sink, 1 << 20), "cudaMalloc");
  cudaStream_t s, s2;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
  check(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking), "stream");

  const double copy = median_gbs(s, seq_bytes, [&] {
    check(cudaMemcpyAsync(dev2, host, seq_bytes, cudaMemcpyHostToDevice, s), "copy");
  });
  report("copy engine, pinned -> device", seq_bytes, copy, copy);

  const size_t n16 = seq_bytes / 16;
  for (int per_sm : {1, 2, 4, 8, 16}) {
    const int blocks = per_sm * sms;
    const double g = median_gbs(s, seq_bytes, [&] {
      read_kernel<4><<<blocks, 256, 0, s>>>(reinterpret_cast<const uint4*>(host_dev), n16, sink);
    });
    char what[64];
    std::snprintf(what, sizeof what, "kernel reads host, %2d blocks/SM x 256, 4 ld", per_sm);
    report(what, seq_bytes, g, copy);
  }
  {
    const double g = median_gbs(s, seq_bytes, [&] {
      read_kernel<1><<<8 * sms, 256, 0, s>>>(reinterpret_cast<const uint4*>(host_dev), n16, sink);
    });
    report("kernel reads host,  8 blocks/SM x 256, 1 ld", seq_bytes, g, copy);
  }

  // 64 records of a Qwen3-30B-A3B expert (4-bit, group 64: 2,654,208 bytes; rows of 1,024
  // bytes as gate and up have) at scattered 4 KiB-aligned offsets: a decode token's experts of
  // 8 layers at --gpu-mem 0.
  const size_t record = 2654208, row = 1024;
  const int records = 64;
  std::vector<size_t> offsets(records);
  {
    std::vector<size_t> slots(span / record);
    for (size_t i = 0; i < slots.size(); ++i) slots[i] = i * record / 4096 * 4096;
    std::shuffle(slots.begin(), slots.end(), rng);
    std::copy_n(slots.begin(), records, offsets.begin());
  }
  size_t* offsets_dev = nullptr;
  check(cudaMalloc(&offsets_dev, records * sizeof(size_t)), "cudaMalloc");
  check(cudaMemcpy(offsets_dev, offsets.data(), records * sizeof(size_t), cudaMemcpyHostToDevice),
        "offsets");
  const size_t rec_bytes = size_t(records) * record;
  for (int per_sm : {2, 4, 8}) {
    const double g = median_gbs(s, rec_bytes, [&] {
      records_kernel<<<per_sm * sms, 256, 0, s>>>(host_dev, offsets_dev, records, record, row,
                                                  sink);
    });
    char what[64];
    std::snprintf(what, sizeof what, "64 expert records from host, %d blocks/SM", per_sm);
    report(what, rec_bytes, g, copy);
  }
  {
    const double g = median_gbs(s, rec_bytes, [&] {
      for (int r = 0; r < records; ++r)
        check(cudaMemcpyAsync(dev2 + (size_t(r) * record) % (seq_bytes - record), host + offsets[r],
                              record, cudaMemcpyHostToDevice, s),
              "copy");
    });
    report("64 expert records by the copy engine", rec_bytes, g, copy);
  }
  {
    const double g = median_gbs(s, rec_bytes, [&] {
      records_kernel<<<4 * sms, 256, 0, s>>>(dev, offsets_dev, records, record, row, sink);
    });
    report("64 expert records from HBM, 4 blocks/SM", rec_bytes, g, copy);
  }

  // Both at once (the copy engine on s2, a kernel on s): does a kernel's reading add to the
  // copy engine's, or share the link with it?
  {
    cudaEvent_t fork;
    check(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming), "event");
    const double g = median_gbs(s, 2 * seq_bytes, [&] {
      check(cudaEventRecord(fork, s), "record");
      check(cudaStreamWaitEvent(s2, fork, 0), "wait");
      check(cudaMemcpyAsync(dev2, host + seq_bytes, seq_bytes, cudaMemcpyHostToDevice, s2), "copy");
      read_kernel<4><<<4 * sms, 256, 0, s>>>(reinterpret_cast<const uint4*>(host_dev), n16, sink);
      check(cudaEventRecord(fork, s2), "record");
      check(cudaStreamWaitEvent(s, fork, 0), "join");
    });
    report("copy engine + kernel reading host, together", 2 * seq_bytes, g, copy);
    cudaEventDestroy(fork);
  }
  {
    const size_t n = span / 16;
    const double g = median_gbs(s, span, [&] {
      read_kernel<4><<<4 * sms, 256, 0, s>>>(reinterpret_cast<const uint4*>(dev), n, sink);
    });
    report("kernel reads HBM, 4 blocks/SM x 256, 4 ld", span, g, copy);
  }
  // The host's memory shared by CPU threads and the GPU's in-place reads. The CPU reads its
  // own 1 GiB (page-locked like the RAM tier; larger than the host's caches), the GPU reads the
  // 64 scattered records over and over for about a second.
  {
    const size_t cpu_bytes = 1024 * kMiB;
    uint8_t* cpu_buf = nullptr;
    check(cudaHostAlloc(&cpu_buf, cpu_bytes, cudaHostAllocDefault), "cudaHostAlloc (1 GiB)");
    for (size_t i = 0; i < cpu_bytes; i += 8) *reinterpret_cast<uint64_t*>(cpu_buf + i) = rng();
    const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
    std::vector<int> counts = {1, 4, hw / 2, hw - 2, hw};
    counts.erase(std::remove_if(counts.begin(), counts.end(), [](int n) { return n < 1; }),
                 counts.end());
    std::sort(counts.begin(), counts.end());
    counts.erase(std::unique(counts.begin(), counts.end()), counts.end());
    const int passes = std::max(1, int(1.0 / (double(rec_bytes) / 40e9)));  // ~1 s at 40 GB/s
    for (const int n : counts) {
      {
        CpuReaders r(cpu_buf, cpu_bytes, n);
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        const auto [bytes, s] = r.finish();
        std::printf("%-44s %8.0f MiB %8.1f GB/s\n",
                    (std::to_string(n) + " CPU threads read host memory, alone").c_str(),
                    bytes / kMiB, bytes / s / 1e9);
      }
      Timer t;
      CpuReaders r(cpu_buf, cpu_bytes, n);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the readers under way
      check(cudaEventRecord(t.a, s), "record");
      for (int p = 0; p < passes; ++p)
        records_kernel<<<4 * sms, 256, 0, s>>>(host_dev, offsets_dev, records, record, row, sink);
      check(cudaEventRecord(t.b, s), "record");
      check(cudaEventSynchronize(t.b), "sync");
      const auto [bytes, secs] = r.finish();
      float ms = 0;
      check(cudaEventElapsedTime(&ms, t.a, t.b), "elapsed");
      const double gpu = double(rec_bytes) * passes / (ms * 1e-3) / 1e9, cpu = bytes / secs / 1e9;
      std::printf("%-44s %8.1f GB/s CPU + %5.1f GB/s GPU in place = %5.1f GB/s\n",
                  (std::to_string(n) + " CPU threads + GPU reading host, together").c_str(), cpu,
                  gpu, cpu + gpu);
      std::fflush(stdout);
    }
    cudaFreeHost(cpu_buf);
  }
  check(cudaDeviceSynchronize(), "final");
  cudaFreeHost(host);
  return 0;
}
