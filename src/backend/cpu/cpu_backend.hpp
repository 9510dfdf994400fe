// The CPU backend: the Backend ops (backend.hpp) on host memory, run to completion on a
// thread pool. The reference implementation every other backend is tested against.
//
// Files: cpu_backend.cpp (memory, embedding, norms, matmul, rope), cpu_attention.cpp,
// cpu_deltanet.cpp, cpu_route.cpp (routers), cpu_moe.cpp (grouped expert FFN, combine),
// cpu_head_matmul.cpp (per-head products). Kernels they build on:
// matvec.hpp (weight formats, ISA dispatch), vec.hpp, ops.hpp.
#pragma once

#include <memory>

#include "backend/backend.hpp"
#include "core/thread_pool.hpp"

namespace moeflux {

class CpuBackend final : public Backend {
 public:
  // threads: compute threads (0 = all hardware threads). Every product is float32 arithmetic
  // on the exact stored weights.
  explicit CpuBackend(size_t threads);

  const char* name() const override { return "cpu"; }
  Memory memory() const override { return Memory::Host; }
  size_t threads() const override { return pool_.size(); }
  void wake() override { pool_.wake(); }
  ThreadPool& pool() { return pool_; }

  std::unique_ptr<BackendBuffer> allocate(size_t bytes, const char* what) override;
  std::unique_ptr<BackendBuffer> allocate_host(size_t bytes, const char* what) override {
    return allocate(bytes, what);
  }
  // Host memory is the compute tier; the RAM tier needs nothing special.
  std::unique_ptr<TierMemory> expert_tier_memory(size_t, size_t) override { return nullptr; }
  std::unique_ptr<TierMemory> ram_tier_memory(size_t, size_t) override { return nullptr; }
  const uint8_t* resident(const uint8_t* host, size_t) override { return host; }
  void upload(const float* host, size_t host_pitch, const Tensor& dst) override;
  void download(const Tensor& src, float* host, size_t host_pitch) override;
  void argmax_rows(const Tensor& x, std::span<int32_t> out, std::span<uint8_t> finite) override;
  void top_k_rows(const Tensor& x, size_t k, std::span<TopEntry> best,
                  std::span<uint8_t> finite) override;
  void scatter_rows(const float* host, size_t host_pitch, std::span<const int32_t> rows,
                    const Tensor& dst) override;
  void fill(const Tensor& t, float value) override;
  void synchronize() override {}

  void embed(const MatrixView& E, std::span<const int> tokens, const Tensor& X) override;
  void rmsnorm(const Tensor& x, const float* w, const Tensor& y, float eps,
               bool zero_centered) override;
  void matmul(const Tensor& X, std::span<const Projection> proj) override;
  void rope(const Tensor& x, const RopeTable& table, int pos0) override;
  void attention(const AttentionArgs& a) override;
  void head_matmul(const Tensor& X, const MatrixView& W, const Tensor& Y) override;
  void copy(const Tensor& src, const Tensor& dst) override;
  void conv1d_silu(const Tensor& x, const float* w, size_t kernel, const Tensor& state,
                   const Tensor& y) override;
  void gated_delta_rule(const DeltaRuleArgs& a) override;
  void rmsnorm_gated(const Tensor& x, const Tensor& z, const float* w, float eps,
                     const Tensor& y) override;
  void route(const Tensor& logits, const RouterSpec& spec, const RouteOutput& out) override;
  void expert_ffn(const Tensor& X, std::span<const ExpertTask> tasks, const Tensor& slots) override;
  void expert_ffn_indexed(const Tensor& X, const int32_t* ids, size_t k, const IndexedExperts& ex,
                          const Tensor& slots, size_t slots_per_token) override;
  void combine(const CombineArgs& a) override;

 private:
  ThreadPool pool_;
};

// Host memory for `bytes` bytes, 64-byte aligned; large blocks are anonymous mappings whose
// pages are committed on first touch (a KV cache sized for a long context costs only what is
// used). Throws moeflux::Error naming `what`.
std::unique_ptr<BackendBuffer> allocate_host_buffer(size_t bytes, const char* what);

}  // namespace moeflux
