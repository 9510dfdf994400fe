// `moeflux bench --json` carries every figure the streaming issue asks for, consistently:
// prefill/decode tok/s (median + runs), expert bytes per token by tier, cache hit rates overall,
// per tier and per layer, prefetch counters, achieved GB/s and the ceilings with their ratios;
// `--timing` prints the per-layer table with the "other" column. No figure is asserted to be
// fast: only present, finite and consistent.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.hpp"

namespace moeflux::test {
namespace {

using nlohmann::json;

void expect_rate(const json& v, const std::string& what) {
  ASSERT_TRUE(v.is_number()) << what;
  EXPECT_GE(v.get<double>(), 0.0) << what;
  EXPECT_LE(v.get<double>(), 1.0) << what;
}

TEST(BenchCli, JsonReportHasEveryFigure) {
  TempDir tmp;
  const std::string model = fixture_dir("../../models/moeflux-tiny-kjv");
  const CommandResult r = run_moeflux({"bench", "-m", model, "--prompt-len", "12", "--gen-len", "6",
                                       "--repeat", "2", "--ram-cache", "2M", "--prefetch", "both",
                                       "--threads", "2", "--timing", "--json", tmp / "bench.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("other"), std::string::npos) << "--timing table without the other column:\n"
                                                    << r.err;
  EXPECT_NE(r.out.find("decode"), std::string::npos) << r.out;

  std::ifstream in(tmp / "bench.json");
  const json j = json::parse(in);
  for (const char* k : {"prefill_tok_s", "decode_tok_s"}) {
    ASSERT_TRUE(j.contains(k)) << k;
    EXPECT_GT(j[k]["median"].get<double>(), 0) << k;
    EXPECT_EQ(j[k]["runs"].size(), 2u) << k;
  }
  const json& s = j["decode_streaming"];
  EXPECT_EQ(s["tokens"].get<int>(), 6);
  const double requested = s["bytes_per_token"]["requested"].get<double>();
  EXPECT_GT(requested, 0);
  // Every requested byte came from a tier, a prefetch or storage on demand.
  ASSERT_EQ(s["tiers"].size(), 1u);
  EXPECT_EQ(s["tiers"][0]["name"], "ram");
  EXPECT_EQ(s["tiers"][0]["memory"], "host");
  EXPECT_GT(s["tiers"][0]["budget_bytes"].get<double>(), 0);
  const double parts = s["hit_rate"]["ram"].get<double>() +
                       s["hit_rate"]["prefetch"].get<double>() +
                       s["hit_rate"]["miss"].get<double>();
  EXPECT_NEAR(parts, 1.0, 1e-9);
  for (const char* k : {"ram", "prefetch", "miss"}) expect_rate(s["hit_rate"][k], k);
  for (const char* k : {"ram_cache", "prefetched", "storage"})
    EXPECT_GE(s["bytes_per_token"][k].get<double>(), 0) << k;
  EXPECT_TRUE(s["io_wait_ms_per_token"].is_number());
  ASSERT_FALSE(s["layers"].empty());
  for (const json& l : s["layers"]) {
    expect_rate(l["cache_hit_rate"], "layer cache hit rate");
    expect_rate(l["tier_hit_rate"]["ram"], "layer ram hit rate");
    expect_rate(l["prefetch_hit_rate"], "layer prefetch hit rate");
    expect_rate(l["miss_rate"], "layer miss rate");
  }
  for (const char* kind : {"temporal", "lookahead"}) {
    const json& p = s["prefetch"][kind];
    EXPECT_GT(p["predictions"].get<uint64_t>(), 0u) << kind;
    EXPECT_LE(p["correct"].get<uint64_t>(), p["predictions"].get<uint64_t>()) << kind;
    EXPECT_LE(p["wasted_reads"].get<uint64_t>(), p["reads"].get<uint64_t>()) << kind;
    expect_rate(p["accuracy"], kind);
    EXPECT_GE(p["wasted_bytes_per_token"].get<double>(), 0) << kind;
  }
  const json& st = j["storage"];
  for (const char* k :
       {"gb_s_over_decode_wall", "gb_s_while_waiting", "ceiling_gb_s", "ratio_to_ceiling",
        "ratio_while_waiting_to_ceiling", "expert_batch_ceiling_gb_s",
        "ratio_while_waiting_to_expert_batches", "ratio_while_waiting_to_memcpy"}) {
    ASSERT_TRUE(st.contains(k)) << k;
    EXPECT_TRUE(std::isfinite(st[k].get<double>())) << k;
  }
  EXPECT_EQ(st["ceiling_name"], "page-cache read");
  for (const char* k : {"direct_read", "page_cache_read", "memcpy_1_thread", "memcpy_all_threads",
                        "expert_batches"})
    ASSERT_TRUE(j["ceilings"].contains(k)) << k;
  EXPECT_GT(j["ceilings"]["page_cache_read"]["gb_s"].get<double>(), 0);
  EXPECT_GT(j["ceilings"]["memcpy_gb_s"].get<double>(), 0);
  EXPECT_TRUE(j["ceilings"]["expert_batches"]["measured"].get<bool>());
}

// --sample decodes with the default sampler (seeded) instead of the greedy pick, and says so.
TEST(BenchCli, SampleDecodesWithTheSampler) {
  TempDir tmp;
  const std::string model = fixture_dir("../../models/moeflux-tiny-kjv");
  const CommandResult r =
      run_moeflux({"bench", "-m", model, "--prompt-len", "8", "--gen-len", "6", "--repeat", "1",
                   "--no-ceilings", "--threads", "2", "--sample", "--json", tmp / "bench.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("outside the pass (sampling, session)"), std::string::npos) << r.out;
  std::ifstream in(tmp / "bench.json");
  const json j = json::parse(in);
  EXPECT_TRUE(j["options"]["sample"].get<bool>());
  EXPECT_GT(j["decode_tok_s"]["median"].get<double>(), 0);
}

TEST(BenchCli, BadOptionsAreClearErrors) {
  const std::string model = fixture_dir("../../models/moeflux-tiny-kjv");
  const CommandResult r = run_moeflux({"bench", "-m", model, "--ram-cache", "lots"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--ram-cache"), std::string::npos) << r.err;
  const CommandResult big =
      run_moeflux({"bench", "-m", model, "--prompt-len", "100000", "--no-ceilings"});
  EXPECT_NE(big.exit_code, 0);
  EXPECT_NE(big.err.find("positions"), std::string::npos) << big.err;
}

}  // namespace
}  // namespace moeflux::test
