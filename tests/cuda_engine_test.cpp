// The CUDA backend end to end, on converted fixtures of both families: logits on the GPU match
// the CPU backend's at every position (prompt chunks and token-by-token decode), and the GPU
// expert tier changes nothing: a tier of working slots only (--gpu-mem 0, every expert copied
// in on demand from the page-locked RAM tier or from storage) gives logits bit-identical to
// every expert resident on the GPU (--gpu-mem all), with and without prefetch.
//
// Skipped where there is no CUDA backend or no GPU (CI); parity against transformers on the GPU
// runs through the CLI (parity_test.cpp with MOEFLUX_BACKEND=cuda, bench/device/cuda.sh).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cuda_available.hpp"
#include "streaming_fixture.hpp"

namespace moeflux::test {
namespace {

class CudaEngine : public StreamingFixture {
 protected:
  void SetUp() override {
    if (const std::string why = why_no_cuda(); !why.empty()) GTEST_SKIP() << why;
    StreamingFixture::SetUp();
  }
  // No expert computed on the CPU unless a test asks (CPU and GPU kernels round differently);
  // experts copied into the GPU tier unless a test asks for reads in place.
  EngineOptions on(const char* backend, size_t gpu_bytes = 0) const {
    EngineOptions o;
    o.backend = backend;
    o.gpu_cache_bytes = gpu_bytes;
    o.cpu_experts = CpuExpertsMode::Off;
    o.gpu_reads = GpuReads::Copy;
    return o;
  }
  // Relative L2 error of b against a, per position of V logits.
  static double worst_rel_l2(const std::vector<float>& a, const std::vector<float>& b, size_t V) {
    EXPECT_EQ(a.size(), b.size());
    double worst = 0;
    for (size_t p = 0; p + V <= a.size(); p += V) {
      double num = 0, den = 0;
      for (size_t i = 0; i < V; ++i) {
        const double d = double(a[p + i]) - b[p + i];
        num += d * d;
        den += double(a[p + i]) * a[p + i];
      }
      worst = std::max(worst, std::sqrt(num / std::max(den, 1e-30)));
    }
    return worst;
  }
};

TEST_P(CudaEngine, LogitsMatchTheCpuBackendChunkedAndTokenByToken) {
  const size_t V = model_->config().vocab_size;
  for (size_t chunk : {size_t{1}, size_t{16}}) {
    const std::vector<float> cpu = logits(on("cpu"), chunk);
    const std::vector<float> gpu = logits(on("cuda"), chunk);
    const double err = worst_rel_l2(cpu, gpu, V);
    std::printf("[cuda parity] %s chunk %zu: worst relative L2 vs CPU %.3g\n", GetParam().c_str(),
                chunk, err);
    EXPECT_LT(err, 1e-4) << "chunk " << chunk;
  }
}

TEST_P(CudaEngine, GpuTierSizeAndPrefetchChangeNothing) {
  const std::vector<float> all = logits(on("cuda", EngineOptions::kGpuMemAll), 1);
  EngineOptions slots_only = on("cuda", 0);
  EngineOptions prefetch = on("cuda", all_experts_bytes() / 4);
  prefetch.stream.prefetch = PrefetchMode::Both;
  prefetch.stream.ram_cache_bytes = all_experts_bytes() / 2;
  prefetch.stream.prefetch_copies = 0;
  // Guesses copied into the GPU tier from the first one on (uses wait for those copies), into
  // kept slots or, with --gpu-mem 0, into working slots.
  EngineOptions copies = prefetch;
  copies.stream.prefetch_copies = 3;  // of K = 4 guesses
  copies.stream.prefetch_copy_after = 0;
  EngineOptions copies_slots = copies;
  copies_slots.gpu_cache_bytes = 0;
  for (const EngineOptions& o : {slots_only, prefetch, copies, copies_slots}) {
    const std::vector<float> got = logits(o, 1);
    ASSERT_EQ(got.size(), all.size());
    EXPECT_EQ(std::memcmp(got.data(), all.data(), all.size() * sizeof(float)), 0)
        << "gpu-mem " << o.gpu_cache_bytes << ", prefetch copies " << o.stream.prefetch_copies;
    const uint64_t copied = last_stream_.prefetch[0].copies + last_stream_.prefetch[1].copies;
    if (o.stream.prefetch_copies > 0 && o.stream.prefetch != PrefetchMode::None)
      EXPECT_GT(copied, 0u) << "no guess was copied into the GPU tier";
    else
      EXPECT_EQ(copied, 0u);
  }
}

// The GPU's kernels reading RAM-tier records in place (--gpu-reads in-place: page-locked host
// memory mapped into the GPU) instead of copying them in: the same kernels on the same bytes,
// so the logits are bit-identical to copying them in (and, token by token, to every expert
// resident) — with a GPU tier of working slots only (everything read in place), one that admits
// records used often, a RAM tier too small for the model (its slots reused by storage reads
// while kernels may still read them: they stay pinned until the compute has passed), prefetch
// into it, and prompt chunks (which copy, but for a last chunk of at most 8 rows).
TEST_P(CudaEngine, InPlaceReadsChangeNothing) {
  const std::vector<float> all = logits(on("cuda", EngineOptions::kGpuMemAll), 1);
  struct Case {
    const char* name;
    size_t gpu_bytes, ram_bytes;
    PrefetchMode prefetch;
    size_t chunk;
  };
  const size_t A = all_experts_bytes();
  for (const Case& c : {Case{"slots only, RAM holds all", 0, A, PrefetchMode::None, 1},
                        Case{"a quarter on the GPU", A / 4, A, PrefetchMode::None, 1},
                        Case{"RAM of working slots", A / 4, 0, PrefetchMode::None, 1},
                        Case{"small RAM, prefetch", 0, A / 8, PrefetchMode::Both, 1},
                        Case{"prompt chunks", A / 4, A, PrefetchMode::None, 16}}) {
    SCOPED_TRACE(c.name);
    EngineOptions o = on("cuda", c.gpu_bytes);
    o.stream.ram_cache_bytes = c.ram_bytes;
    o.stream.prefetch = c.prefetch;
    o.gpu_reads = GpuReads::Copy;
    const std::vector<float> copied = logits(o, c.chunk);
    EXPECT_EQ(last_stream_.total().read_in_place, 0u);
    o.gpu_reads = GpuReads::InPlace;
    const std::vector<float> got = logits(o, c.chunk);
    ASSERT_EQ(got.size(), copied.size());
    EXPECT_EQ(std::memcmp(got.data(), copied.data(), got.size() * sizeof(float)), 0);
    if (c.chunk == 1) {
      ASSERT_EQ(got.size(), all.size());
      EXPECT_EQ(std::memcmp(got.data(), all.data(), all.size() * sizeof(float)), 0);
    }
    const LayerStreamStats t = last_stream_.total();
    // (A last prompt chunk of at most 8 rows reads in place.)
    const size_t last_chunk = tokens_.size() % c.chunk;
    if (c.chunk == 1) {
      EXPECT_GT(t.read_in_place, 0u) << "no record was read in place";
    } else if (last_chunk == 0 || last_chunk > 8) {
      EXPECT_EQ(t.read_in_place, 0u) << "a prompt chunk read records in place";
    }
    if (c.gpu_bytes == 0) {
      EXPECT_EQ(last_stream_.tiers[0].copied_bytes, 0u);
    }
  }
}

// --gpu-reads auto reads in place where that measured faster — a GPU tier that keeps records,
// or a CPU share — on a machine whose kernels read host memory nearly as fast as its copy
// engine (each engine's own measurement); copy and in-place are what they say; every expert
// resident streams nothing (and measures nothing). Wherever it copies, copies are admitted as
// reads in place are.
TEST_P(CudaEngine, GpuReadsAutoReadsInPlaceWhereThatPays) {
  const size_t A = all_experts_bytes();
  struct Choice {
    bool in_place;
    HostReadRates rates;
    bool admit_copies;
  };
  auto choose = [&](GpuReads mode, size_t gpu_bytes, CpuExpertsMode cpu) {
    EngineOptions o = on("cuda", gpu_bytes);
    o.gpu_reads = mode;
    o.cpu_experts = cpu;
    o.threads = 2;
    Engine e(*model_, o);
    const Choice c{e.reads_in_place(), e.host_read_rates(), e.streamer().options().admit_copies};
    // Copies are admitted like reads in place wherever the GPU copies its misses in (but with
    // every expert resident, where nothing is copied; MOEFLUX_ADMIT_COPIES overrides).
    if (gpu_bytes != EngineOptions::kGpuMemAll && !std::getenv("MOEFLUX_ADMIT_COPIES")) {
      EXPECT_EQ(c.admit_copies, !c.in_place);
    }
    return c;
  };
  auto keep_up = [](const HostReadRates& r) {
    EXPECT_GT(r.copy, 0);
    return r.in_place >= kAutoInPlaceMinShare * r.copy;
  };
  const CpuExpertsMode off = CpuExpertsMode::Off, cpu = CpuExpertsMode::Auto;
  EXPECT_FALSE(choose(GpuReads::Auto, 0, off).in_place);
  const Choice kept = choose(GpuReads::Auto, A / 4, off);
  EXPECT_EQ(kept.in_place, keep_up(kept.rates));
  const Choice shared = choose(GpuReads::Auto, 0, cpu);
  EXPECT_EQ(shared.in_place, keep_up(shared.rates));
  EXPECT_FALSE(choose(GpuReads::Copy, A / 4, cpu).in_place);
  EXPECT_TRUE(choose(GpuReads::InPlace, 0, off).in_place);
  const Choice resident = choose(GpuReads::Auto, EngineOptions::kGpuMemAll, off);
  EXPECT_FALSE(resident.in_place);
  EXPECT_EQ(resident.rates.copy, 0);
}

// Experts computed by the CPU from the RAM tier while the GPU computes the rest (--cpu-experts
// all and auto, decode and chunked prompts): the logits agree with every expert on the GPU
// within the CPU backend's tolerance, and with `all` the CPU computed some.
TEST_P(CudaEngine, CpuComputedExpertsMatchTheGpu) {
  const size_t V = model_->config().vocab_size;
  for (size_t chunk : {size_t{1}, size_t{4}, size_t{16}}) {
    const std::vector<float> all = logits(on("cuda", EngineOptions::kGpuMemAll), chunk);
    for (const CpuExpertsMode mode : {CpuExpertsMode::All, CpuExpertsMode::Auto}) {
      SCOPED_TRACE(std::string(cpu_experts_mode_name(mode)) + " chunk " + std::to_string(chunk));
      EngineOptions o = on("cuda", all_experts_bytes() / 4);
      o.stream.ram_cache_bytes = all_experts_bytes();
      o.cpu_experts = mode;
      o.threads = 2;
      o.prefill_chunk = chunk;
      Session s(*model_, o);
      std::vector<float> got;
      s.eval_prompt(tokens_, &got);
      EXPECT_LT(worst_rel_l2(all, got, V), 1e-4);
      const LayerStreamStats t = s.streamer().stats().total();
      if (mode == CpuExpertsMode::All && chunk == 1) {
        EXPECT_GT(t.host_computed, 0u);
      }
      EXPECT_LE(t.host_computed, t.tier_hits[s.streamer().ram_tier()] + t.prefetch_hits);
    }
  }
}

// A decode step recorded into a CUDA graph once and replayed for the tokens after (every expert
// resident, one sequence) gives the logits of the same ops issued one by one
// (MOEFLUX_CUDA_GRAPHS=0), bit for bit, and the same routing for the host (copied on a branch of
// the recording that the pass does not wait for) — across a second session of the same engine
// (its own recording), a prompt chunk between decode steps (it grows the scratch the recording
// uses: recorded anew) and clear().
TEST_P(CudaEngine, RecordedDecodeStepsEqualOpByOp) {
  auto run = [&](Backend::RecordingStats* stats) {
    EngineOptions o = on("cuda", EngineOptions::kGpuMemAll);
    o.threads = 2;
    o.prefill_chunk = 8;
    Engine engine(*model_, o);
    Session a(engine), b(engine);
    std::vector<float> all;
    // The logits, then each layer's routing of the last token (ids as floats, weights).
    auto take = [&all](const Session& s, const std::vector<float>& l) {
      all.insert(all.end(), l.begin(), l.end());
      for (const RoutingRecord& r : s.last_routing()) {
        for (int e : r.experts) all.push_back(float(e));
        all.insert(all.end(), r.weights.begin(), r.weights.end());
      }
    };
    const size_t n = tokens_.size();
    for (size_t i = 0; i < n / 2; ++i) {
      take(a, a.eval_token(tokens_[i]));
      take(b, b.eval_token(tokens_[n - 1 - i]));
    }
    take(a, a.eval_prompt(std::span<const int>(tokens_).subspan(0, 8)));  // a longer batch
    for (size_t i = 0; i < 4; ++i) take(a, a.eval_token(tokens_[i]));
    b.clear();
    for (size_t i = 0; i < 4; ++i) take(b, b.eval_token(tokens_[i]));
    if (stats) *stats = engine.backend().recording_stats();
    return all;
  };
  ::setenv("MOEFLUX_CUDA_GRAPHS", "0", 1);
  Backend::RecordingStats off;
  const std::vector<float> plain = run(&off);
  ::unsetenv("MOEFLUX_CUDA_GRAPHS");
  EXPECT_EQ(off.recorded + off.replayed, 0u);
  Backend::RecordingStats st;
  const std::vector<float> recorded = run(&st);
  ASSERT_EQ(recorded.size(), plain.size());
  EXPECT_EQ(std::memcmp(recorded.data(), plain.data(), plain.size() * sizeof(float)), 0);
  // The routing's copies delayed on their branch (200 µs, longer than a layer): the next route
  // must still wait for them before it rewrites the device routing they read.
  ::setenv("MOEFLUX_CUDA_SIDE_DELAY_US", "200", 1);
  const std::vector<float> delayed = run(nullptr);
  ::unsetenv("MOEFLUX_CUDA_SIDE_DELAY_US");
  ASSERT_EQ(delayed.size(), plain.size());
  EXPECT_EQ(std::memcmp(delayed.data(), plain.data(), plain.size() * sizeof(float)), 0);
  // Two sessions, then one recorded anew after the prompt chunk; the rest replays.
  std::printf("[cuda graphs] %s: %llu recorded, %llu replayed, %llu abandoned (last: %s)\n",
              GetParam().c_str(), (unsigned long long)st.recorded, (unsigned long long)st.replayed,
              (unsigned long long)st.failed, st.last_failure.c_str());
  EXPECT_GE(st.recorded, 3u);
  EXPECT_LE(st.recorded, 4u);
  EXPECT_GE(st.replayed, tokens_.size() - 8);
  // The routing's copies were recorded on their branch (a layer's worth per recording at least).
  const char* side = std::getenv("MOEFLUX_CUDA_SIDE_COPIES");
  if (!(side && std::string(side) == "0")) {
    EXPECT_GE(st.side_branches, st.recorded);
  }
}

TEST_P(CudaEngine, BatchedDecodeEqualsEachSessionAlone) {
  EngineOptions o = on("cuda", EngineOptions::kGpuMemAll);
  o.prefill_chunk = 4;
  Engine engine(*model_, o);
  Session a(engine), b(engine), alone(engine);
  std::vector<float> want_b;
  for (size_t i = 0; i < 6; ++i) want_b = alone.eval_token(tokens_[i + 3]);
  for (size_t i = 0; i < 6; ++i) {
    Session* s[2] = {&a, &b};
    const int t[2] = {tokens_[i], tokens_[i + 3]};
    eval_batch(s, t);
  }
  EXPECT_EQ(std::memcmp(b.logits().data(), want_b.data(), want_b.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaEngine,
                         testing::Values("qwen3_moe_sharded", "qwen3_5_moe_text"));

}  // namespace
}  // namespace moeflux::test
