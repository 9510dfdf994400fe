// The hybrid planner (model/host_experts.hpp): how a layer's experts are split between the CPU
// and copies to the GPU, and how the rates it splits by follow measurements.
#include "model/host_experts.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "core/error.hpp"

namespace moeflux::test {
namespace {

using P = RecordPlace;

std::vector<uint8_t> plan(const HybridPlanner& p, const std::vector<P>& where,
                          const std::vector<size_t>& rows, size_t* n = nullptr) {
  std::vector<uint8_t> on_host(where.size(), 7);  // poisoned: every flag must be written
  const size_t got = p.plan(where, rows, 1 << 20, on_host);
  if (n) *n = got;
  return on_host;
}

HybridPlanner with_rates(CpuExpertsMode mode, double cpu, double copy) {
  return HybridPlanner(mode, cpu, copy);
}

TEST(HybridPlanner, EqualRatesSplitTheRamRecordsEvenly) {
  const HybridPlanner p = with_rates(CpuExpertsMode::Auto, 30e9, 30e9);
  size_t n = 0;
  const std::vector<uint8_t> got =
      plan(p, std::vector<P>(6, P::Ram), std::vector<size_t>(6, 1), &n);
  EXPECT_EQ(n, 3u);
  EXPECT_EQ(got, (std::vector<uint8_t>{1, 0, 1, 0, 1, 0}));  // ties go to the CPU
}

TEST(HybridPlanner, TheFasterSideTakesMore) {
  // A CPU 10/3 times as fast as the copies (0.3 copy times a record): of 8 records, 6 go to
  // the CPU (1.8 copy times) and 2 are copied; a 7th on the CPU would end last (2.1).
  const HybridPlanner p = with_rates(CpuExpertsMode::Auto, 100e9, 30e9);
  size_t n = 0;
  plan(p, std::vector<P>(8, P::Ram), std::vector<size_t>(8, 1), &n);
  EXPECT_EQ(n, 6u);
  const HybridPlanner slow_cpu = with_rates(CpuExpertsMode::Auto, 1e9, 30e9);
  plan(slow_cpu, std::vector<P>(8, P::Ram), std::vector<size_t>(8, 1), &n);
  EXPECT_EQ(n, 0u);
}

TEST(HybridPlanner, GpuHitsStayAndStorageMissesLoadTheCopySide) {
  const HybridPlanner p = with_rates(CpuExpertsMode::Auto, 30e9, 30e9);
  // Two storage misses are copied whatever happens: the CPU takes the next two RAM records.
  const std::vector<uint8_t> got =
      plan(p, {P::Storage, P::Gpu, P::Storage, P::Ram, P::Ram, P::Ram, P::Gpu},
           std::vector<size_t>(7, 1));
  EXPECT_EQ(got, (std::vector<uint8_t>{0, 0, 0, 1, 1, 1, 0}));
}

TEST(HybridPlanner, RecordsOfManyRowsStayOnTheGpu) {
  const HybridPlanner p = with_rates(CpuExpertsMode::All, 30e9, 30e9);
  const std::vector<uint8_t> got = plan(p, std::vector<P>(3, P::Ram), {1, 3, 2});
  EXPECT_EQ(got, (std::vector<uint8_t>{1, 0, 1}));
}

TEST(HybridPlanner, ModesAllAndOff) {
  size_t n = 0;
  plan(with_rates(CpuExpertsMode::All, 1e9, 100e9), std::vector<P>(5, P::Ram),
       std::vector<size_t>(5, 1), &n);
  EXPECT_EQ(n, 5u);  // however slow the CPU
  plan(with_rates(CpuExpertsMode::Off, 100e9, 1e9), std::vector<P>(5, P::Ram),
       std::vector<size_t>(5, 1), &n);
  EXPECT_EQ(n, 0u);
}

TEST(HybridPlanner, RatesFollowObservations) {
  HybridPlanner p(CpuExpertsMode::Auto);
  const double cpu = p.cpu_rate(), copy = p.copy_rate();
  p.observe_cpu(1e6, 0.0);  // below timer noise, or nothing moved: ignored
  p.observe_copy(0.0, 1.0);
  EXPECT_EQ(p.cpu_rate(), cpu);
  EXPECT_EQ(p.copy_rate(), copy);
  for (int i = 0; i < 100; ++i) {
    p.observe_cpu(2e9, 0.5);  // 4 GB/s
    p.observe_copy(40e9, 1.0);
  }
  EXPECT_NEAR(p.cpu_rate(), 4e9, 1e6);
  EXPECT_NEAR(p.copy_rate(), 40e9, 1e6);
  size_t n = 0;  // the CPU is now 10x slower than the copies: of 8 records it takes none
  plan(p, std::vector<P>(8, P::Ram), std::vector<size_t>(8, 1), &n);
  EXPECT_EQ(n, 0u);
}

// The CPU's time per layer is a fixed overhead plus its bytes at a rate: both are recovered
// from shares of varying size (a bare ratio would call small shares slow), and the overhead
// keeps a lone record off the CPU when copying it is cheaper.
TEST(HybridPlanner, LearnsTheCpuOverheadApartFromItsRate) {
  HybridPlanner p(CpuExpertsMode::Auto, 20e9, 50e9);
  constexpr double kOverhead = 60e-6, kRate = 50e9, kRecord = 1 << 20;
  for (int i = 0; i < 200; ++i) {
    const double bytes = kRecord * (1 + i % 4);
    p.observe_cpu(bytes, kOverhead + bytes / kRate);
  }
  EXPECT_NEAR(p.cpu_overhead(), kOverhead, 1e-6);
  EXPECT_NEAR(p.cpu_rate(), kRate, 0.01 * kRate);
  size_t n = 0;
  // One RAM record: 21 us to copy, 81 us on the CPU: copied.
  plan(p, {P::Ram}, {1}, &n);
  EXPECT_EQ(n, 0u);
  // Eight: the CPU's overhead amortised, it takes a share (the copies' 21 us each against its
  // 60 + 21 per record: 3 on the CPU end at 123 us, 5 copied at 105).
  plan(p, std::vector<P>(8, P::Ram), std::vector<size_t>(8, 1), &n);
  EXPECT_EQ(n, 3u);
}

// The CPU's first shares pay for first use and are not measured; once fitted, one stalled share
// barely moves the fit.
TEST(HybridPlanner, FirstSharesAndStallsDoNotSwingTheCpuFit) {
  HybridPlanner p(CpuExpertsMode::Auto, 20e9, 50e9);
  constexpr double kOverhead = 60e-6, kRate = 50e9, kRecord = 1 << 20;
  for (int i = 0; i < 8; ++i) p.observe_cpu(kRecord, 0.05);  // 20 MB/s: cold
  EXPECT_EQ(p.cpu_rate(), 20e9);
  EXPECT_EQ(p.cpu_overhead(), 0.0);
  for (int i = 0; i < 200; ++i) {
    const double bytes = kRecord * (1 + i % 4);
    p.observe_cpu(bytes, kOverhead + bytes / kRate);
  }
  EXPECT_NEAR(p.cpu_rate(), kRate, 0.01 * kRate);
  p.observe_cpu(4 * kRecord, 0.05);  // one share stalled for 50 ms (taken whole: 1.7 GB/s)
  EXPECT_NEAR(p.cpu_rate(), kRate, 0.25 * kRate);
  EXPECT_NEAR(p.cpu_overhead(), kOverhead, 15e-6);
  size_t n = 0;  // and the CPU still gets its share of eight records
  plan(p, std::vector<P>(8, P::Ram), std::vector<size_t>(8, 1), &n);
  EXPECT_GE(n, 2u);
}

// A CPU locked out by a slow first reading is probed with one record now and then, and wins its
// share back once the probes measure it fast; a CPU that stays slow is probed ever more rarely.
TEST(HybridPlanner, ProbesACpuThatGetsNoShare) {
  constexpr double kRecord = 1 << 20, kFast = 50e9;
  const std::vector<P> where = {P::Gpu, P::Ram, P::Ram, P::Ram, P::Ram, P::Ram, P::Ram, P::Storage};
  const std::vector<size_t> rows = {1, 2, 1, 2, 1, 1, 2, 1};
  for (const bool fast : {true, false}) {
    SCOPED_TRACE(fast ? "the CPU is fast" : "the CPU stays slow");
    HybridPlanner p(CpuExpertsMode::Auto, 0.5e9, 50e9);  // read slow: every split lost
    std::vector<uint8_t> on_host(where.size());
    size_t layers_to_first_probe = 0, shares = 0, probes_seen = 0;
    for (size_t layer = 0; layer < 20000; ++layer) {
      const bool due = p.probe_due();
      std::fill(on_host.begin(), on_host.end(), uint8_t(7));
      const uint64_t probes_before = p.probes();
      const size_t n = p.plan_layer(where, rows, size_t(kRecord), on_host);
      const bool probe = p.probes() > probes_before;
      if (probe) {
        EXPECT_TRUE(due) << "layer " << layer;  // announced a layer ahead
      }
      if (due) {
        EXPECT_GT(n, 0u) << "layer " << layer;
      }
      if (probe) {
        ++probes_seen;
        if (layers_to_first_probe == 0) layers_to_first_probe = layer + 1;
        // The probe: one record of one row, in the RAM tier.
        ASSERT_EQ(std::count(on_host.begin(), on_host.end(), uint8_t(1)), 1);
        const size_t i =
            size_t(std::find(on_host.begin(), on_host.end(), uint8_t(1)) - on_host.begin());
        EXPECT_EQ(where[i], P::Ram);
        EXPECT_EQ(rows[i], 1u);
      } else if (n > 0) {
        ++shares;
      }
      double bytes = 0;
      for (size_t i = 0; i < where.size(); ++i) {
        EXPECT_LE(on_host[i], 1) << "flag " << i << " not written";
        if (on_host[i]) bytes += kRecord * double(rows[i]);
      }
      if (n > 0) p.observe_cpu(bytes, 20e-6 + bytes / (fast ? kFast : 0.5e9));
      if (fast && shares > 0) break;
    }
    EXPECT_EQ(layers_to_first_probe, HybridPlanner::kProbeFirst);
    if (fast) {
      // Warm-up probes are not measured (kCpuWarmup); the next ones raise its rate, so they keep
      // coming every 64 layers until it wins shares of its own.
      EXPECT_GT(shares, 0u);
      EXPECT_LE(probes_seen, 8u + 8u);
      EXPECT_EQ(p.probe_interval(), HybridPlanner::kProbeFirst);
      EXPECT_GT(p.cpu_rate(), 10e9);
    } else {
      // Every 64 layers through the 8 unmeasured warm-up probes and the first measured one,
      // then intervals 64, 128, ..., 4096, then every 4096.
      EXPECT_EQ(shares, 0u);
      EXPECT_EQ(p.probe_interval(), HybridPlanner::kProbeMax);
      EXPECT_LE(probes_seen, 9u + 7u + 20000 / HybridPlanner::kProbeMax);
      EXPECT_GE(probes_seen, 9u + 7u);
    }
  }
}

// A fit made while the CPU was slow (shares of several sizes, so the line is trusted) is not
// kept once the probes measure it fast: measured on the GPU host, where such a line — a few
// GB/s — outweighed every later one-record probe at 26 GB/s and the CPU got nothing for the
// rest of the run (docs/PERF.md, 2026-12-05).
TEST(HybridPlanner, AStaleSlowFitGivesWayToFastProbes) {
  constexpr double kRecord = 2.6e6, kCopy = 50e9;
  HybridPlanner p(CpuExpertsMode::Auto, 20e9, kCopy);
  for (int i = 0; i < 40; ++i) {  // warm-up, then a slow phase: 90 us + 3 GB/s
    const double bytes = kRecord * (1 + i % 4);
    p.observe_cpu(bytes, 90e-6 + bytes / 3e9);
  }
  const std::vector<P> where(8, P::Ram);
  const std::vector<size_t> rows(8, 1);
  std::vector<uint8_t> on_host(where.size());
  size_t layer = 0, probes_before = 0;
  for (; layer < 4096; ++layer) {
    probes_before = p.probes();
    const size_t n = p.plan_layer(where, rows, size_t(kRecord), on_host);
    if (n > 0 && p.probes() == probes_before) break;  // a share of its own
    double bytes = 0;
    for (uint8_t f : on_host) bytes += f ? kRecord : 0;
    if (n > 0) p.observe_cpu(bytes, 10e-6 + bytes / 30e9);  // fast now: 10 us + 30 GB/s
  }
  // The first probe comes after kProbeFirst layers; its reading, far below the stale line's
  // prediction, restarts the fit.
  EXPECT_LE(layer, 2 * HybridPlanner::kProbeFirst);
  EXPECT_EQ(p.probes(), 1u);
  EXPECT_GT(p.cpu_rate(), 20e9);
}

TEST(HybridPlanner, NoProbeWithoutARecordTheCpuCouldTake) {
  HybridPlanner p(CpuExpertsMode::Auto, 0.5e9, 50e9);
  std::vector<uint8_t> on_host(3);
  // GPU hits, storage misses, many-row records: nothing the CPU could take.
  const std::vector<P> where = {P::Gpu, P::Storage, P::Ram};
  const std::vector<size_t> rows = {1, 1, 3};
  for (size_t layer = 0; layer < 1000; ++layer)
    EXPECT_EQ(p.plan_layer(where, rows, 1 << 20, on_host), 0u);
  EXPECT_EQ(p.probes(), 0u);
  HybridPlanner off(CpuExpertsMode::Off, 100e9, 1e9);
  const std::vector<P> ram(3, P::Ram);
  const std::vector<size_t> one(3, 1);
  for (size_t layer = 0; layer < 1000; ++layer)
    EXPECT_EQ(off.plan_layer(ram, one, 1 << 20, on_host), 0u);
  EXPECT_EQ(off.probes(), 0u);
  EXPECT_FALSE(off.probe_due());
}

TEST(HybridPlanner, ParsesItsModes) {
  EXPECT_EQ(parse_cpu_experts_mode("auto"), CpuExpertsMode::Auto);
  EXPECT_EQ(parse_cpu_experts_mode("all"), CpuExpertsMode::All);
  EXPECT_EQ(parse_cpu_experts_mode("off"), CpuExpertsMode::Off);
  EXPECT_THROW(parse_cpu_experts_mode("some"), Error);
  EXPECT_STREQ(cpu_experts_mode_name(CpuExpertsMode::All), "all");
}

}  // namespace
}  // namespace moeflux::test
