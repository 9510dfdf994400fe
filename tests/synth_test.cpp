// `moeflux synth`: random-weight packages with published shapes. The tiny test-only presets
// keep every case small; the published presets are checked at the config level (no writing).
#include "convert/synth.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "backend/cpu/matvec.hpp"
#include "core/error.hpp"
#include "formats/npy.hpp"
#include "formats/package.hpp"
#include "model/tensor_specs.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

// Runs `moeflux synth -q <args> OUT` and expects success.
void synth_ok(const std::vector<std::string>& args, const std::string& out) {
  std::vector<std::string> full = {"synth", "-q"};
  full.insert(full.end(), args.begin(), args.end());
  full.push_back(out);
  const CommandResult r = run_moeflux(full);
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

const std::vector<std::string> kTinyQwen3 = {"--family", "qwen3_moe", "--preset", "tiny-qwen3-moe"};
const std::vector<std::string> kTinyQwen35 = {"--family", "qwen3_5_moe", "--preset",
                                              "tiny-qwen3.5-moe"};

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Every file under `dir`, relative path -> contents.
std::map<std::string, std::string> read_tree(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file())
      files[fs::relative(e.path(), dir).string()] = read_text(e.path().string());
  return files;
}

// Nothing in `dir` but the names listed.
void expect_only(const TempDir& tmp, const std::set<std::string>& allowed) {
  for (const auto& e : fs::directory_iterator(tmp.path()))
    EXPECT_TRUE(allowed.count(e.path().filename().string())) << "left behind: " << e.path();
}

// Evaluates tokens with `moeflux logits` and checks every logit is finite and not all equal.
void expect_finite_logits(const std::string& pkg, const TempDir& tmp) {
  const CommandResult r = run_moeflux(
      {"logits", "-m", pkg, "--tokens", "1,7,42,300,5,511,0,9", "--out", tmp / "logits.npy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const NpyArray a = read_npy(tmp / "logits.npy");
  ASSERT_EQ(a.shape.size(), 2u);
  EXPECT_EQ(a.shape[0], 8u);
  double sq = 0;
  for (double v : a.values) {
    ASSERT_TRUE(std::isfinite(v));
    sq += v * v;
  }
  const double rms = std::sqrt(sq / a.values.size());
  EXPECT_GT(rms, 0.05);  // weights scaled by 1/sqrt(fan-in): logits of order 1
  EXPECT_LT(rms, 50.0);
}

TEST(SynthPresets, PublishedValues) {
  struct Want {
    const char* name;
    Family family;
    int hidden, layers, experts, top_k, moe_inter, shared, heads, kv, head_dim, vocab;
  };
  const Want wants[] = {
      {"qwen3-30b-a3b", Family::Qwen3Moe, 2048, 48, 128, 8, 768, 0, 32, 4, 128, 151936},
      {"qwen3.6-35b-a3b", Family::Qwen3_5Moe, 2048, 40, 256, 8, 512, 512, 16, 2, 256, 248320},
      {"qwen3.5-397b-a17b", Family::Qwen3_5Moe, 4096, 60, 512, 10, 1024, 1024, 32, 2, 256, 248320},
  };
  for (const Want& w : wants) {
    SCOPED_TRACE(w.name);
    const SynthPreset& p = find_synth_preset(w.name);
    EXPECT_FALSE(p.test_only);
    const ModelConfig c = ModelConfig::from_hf_json(synth_config_json(p, 0), w.name);
    EXPECT_EQ(c.family, w.family);
    EXPECT_EQ(c.hidden_size, w.hidden);
    EXPECT_EQ(c.num_layers, w.layers);
    EXPECT_EQ(c.num_experts, w.experts);
    EXPECT_EQ(c.top_k, w.top_k);
    EXPECT_EQ(c.moe_intermediate_size, w.moe_inter);
    EXPECT_EQ(c.shared_expert_intermediate_size, w.shared);
    EXPECT_EQ(c.num_heads, w.heads);
    EXPECT_EQ(c.num_kv_heads, w.kv);
    EXPECT_EQ(c.head_dim, w.head_dim);
    EXPECT_EQ(c.vocab_size, w.vocab);
    EXPECT_TRUE(c.norm_topk_prob);
    EXPECT_FALSE(c.tie_word_embeddings);
    EXPECT_EQ(c.num_moe_layers(), w.layers);
    if (w.family == Family::Qwen3_5Moe) {
      EXPECT_EQ(c.rotary_dim(), 64);  // partial rotary 0.25 of 256
      EXPECT_EQ(c.rope.theta, 1e7);
      EXPECT_EQ(c.linear_num_key_heads, 16);
      EXPECT_EQ(c.linear_num_value_heads, w.hidden == 4096 ? 64 : 32);
      EXPECT_EQ(c.linear_key_head_dim, 128);
      EXPECT_EQ(c.linear_value_head_dim, 128);
      EXPECT_EQ(c.linear_conv_kernel, 4);
      for (int i = 0; i < c.num_layers; ++i)
        EXPECT_EQ(c.layer_kind[i],
                  i % 4 == 3 ? LayerKind::FullAttention : LayerKind::LinearAttention);
    } else {
      EXPECT_EQ(c.rope.theta, 1e6);
      EXPECT_EQ(c.max_position_embeddings, 40960);
    }
  }
}

// The DeepSeek-V3-shaped and GLM presets, as from_hf_json reads them.
TEST(SynthPresets, DeepseekKimiAndGlmShapes) {
  const ModelConfig ds = ModelConfig::from_hf_json(
      synth_config_json(find_synth_preset("deepseek-v3"), 0), "deepseek-v3");
  EXPECT_EQ(ds.family, Family::DeepseekV3);
  EXPECT_EQ(ds.num_layers, 61);
  EXPECT_EQ(ds.num_moe_layers(), 58);  // first_k_dense_replace 3
  EXPECT_EQ(ds.num_experts, 256);
  EXPECT_EQ(ds.n_group, 8);
  EXPECT_EQ(ds.topk_group, 4);
  EXPECT_EQ(ds.q_lora_rank, 1536);
  EXPECT_EQ(ds.kv_lora_rank, 512);
  EXPECT_EQ(ds.head_dim, 192);
  EXPECT_EQ(ds.rope.type, "yarn");
  EXPECT_EQ(ds.mtp_layers, 1);
  // MLA's cache: (512 + 64) floats per layer and position.
  EXPECT_EQ(ds.kv_bytes_per_token(), size_t{61} * 576 * 4);
  const ModelConfig kimi =
      ModelConfig::from_hf_json(synth_config_json(find_synth_preset("kimi-k2"), 0), "kimi-k2");
  EXPECT_EQ(kimi.family, Family::DeepseekV3);
  EXPECT_EQ(kimi.model_type, "kimi_k2");
  EXPECT_EQ(kimi.num_experts, 384);
  EXPECT_EQ(kimi.num_heads, 64);
  EXPECT_EQ(kimi.num_moe_layers(), 60);
  EXPECT_EQ(kimi.n_group, 1);
  const ModelConfig glm = ModelConfig::from_hf_json(
      synth_config_json(find_synth_preset("glm-4.5-air"), 0), "glm-4.5-air");
  EXPECT_EQ(glm.family, Family::Glm4Moe);
  EXPECT_EQ(glm.num_layers, 46);
  EXPECT_EQ(glm.num_moe_layers(), 45);
  EXPECT_EQ(glm.rotary_dim(), 64);
  EXPECT_TRUE(glm.attention_bias);
  EXPECT_FALSE(glm.qk_norm);
  EXPECT_EQ(glm.shared_expert_intermediate_size, 1408);
  EXPECT_EQ(glm.kv_bytes_per_token(), size_t{46} * 2 * 8 * 128 * 4);
}

// Parameter counts of the full presets against the publishers' figures (MTP layers not
// counted, as they are not converted): DeepSeek-V3 671B total, 37B active (its README_WEIGHTS:
// 36.6B counting the LM head, not the embedding table); Kimi-K2 1T total (1.04T in its report)
// and 32B active; GLM-4.5-Air 106B total, 12B active (counted without embedding and LM head).
TEST(SynthPresets, ParameterCountsMatchThePublishedTotals) {
  auto counts = [](const char* name) {
    return count_parameters(
        ModelConfig::from_hf_json(synth_config_json(find_synth_preset(name), 0), name));
  };
  auto B = [](uint64_t n) { return double(n) / 1e9; };
  const ParameterCounts ds = counts("deepseek-v3");
  EXPECT_NEAR(B(ds.total), 671.0, 0.5);
  EXPECT_NEAR(B(ds.active - ds.embedding), 36.6, 0.05);
  EXPECT_NEAR(B(ds.embedding), 0.93, 0.01);  // "0.9B" embedding, and the same for the head
  EXPECT_EQ(ds.lm_head, ds.embedding);
  const ParameterCounts kimi = counts("kimi-k2");
  EXPECT_NEAR(B(kimi.total), 1026.4, 0.5);  // "1T"; 1.04T in the Kimi K2 report
  EXPECT_NEAR(B(kimi.active), 32.5, 0.5);   // "32B" (32.6B in the report)
  const ParameterCounts glm = counts("glm-4.5-air");
  EXPECT_NEAR(B(glm.total), 106.5, 0.5);                                 // "106B"
  EXPECT_NEAR(B(glm.active - glm.embedding - glm.lm_head), 12.0, 0.25);  // "12B"
  // Every resident tensor once, experts 3 * H * I each: a hand count for the tiny preset.
  const ModelConfig t =
      ModelConfig::from_hf_json(synth_config_json(find_synth_preset("tiny-qwen3-moe"), 0), "tiny");
  const ParameterCounts tiny = count_parameters(t);
  EXPECT_EQ(tiny.embedding, 512u * 64);
  EXPECT_EQ(tiny.total - tiny.active, uint64_t(3 * (8 - 2)) * 3 * 64 * 64);    // 3 MoE layers
  EXPECT_EQ(describe_parameters(t).find("0."), 0u) << describe_parameters(t);  // in millions
}

TEST(SynthPresets, LayersKeepThePattern) {
  const ModelConfig c = ModelConfig::from_hf_json(
      synth_config_json(find_synth_preset("qwen3.6-35b-a3b"), 6), "qwen3.6 cut");
  ASSERT_EQ(c.num_layers, 6);
  const LayerKind L = LayerKind::LinearAttention, F = LayerKind::FullAttention;
  EXPECT_EQ(c.layer_kind, (std::vector<LayerKind>{L, L, L, F, L, L}));
  const ModelConfig t = ModelConfig::from_hf_json(
      synth_config_json(find_synth_preset("tiny-qwen3-moe"), 3), "tiny cut");
  EXPECT_EQ(t.layer_is_moe, (std::vector<bool>{true, false, true}));  // dense layer 1 kept
  EXPECT_THROW(synth_config_json(find_synth_preset("qwen3-30b-a3b"), 49), Error);
  EXPECT_THROW(find_synth_preset("qwen9"), Error);
}

TEST(Synth, Qwen3MoePackageLoadsAndRuns) {
  TempDir tmp;
  synth_ok(kTinyQwen3, tmp / "pkg");
  const Package pkg = Package::open(tmp / "pkg");  // validates every file against the manifest
  const ModelConfig& c = pkg.config();
  EXPECT_EQ(c.family, Family::Qwen3Moe);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_TRUE(pkg.manifest().tokenizer_files.empty());
  EXPECT_EQ(pkg.manifest().experts.fmt, QuantFormat::q4());
  EXPECT_EQ(pkg.manifest().expert_files[1], "");  // the dense layer
  for (const auto& t : pkg.manifest().resident)
    EXPECT_EQ(format_name(t.fmt), t.shape.size() == 1 ? "f32" : "bf16") << t.name;
  // Neutral norms (qwen3_moe: w = 1).
  EXPECT_EQ(pkg.vector("norm.weight", 64)[0], 1.0f);
  EXPECT_EQ(pkg.vector("layers.0.self_attn.q_norm.weight", 16)[5], 1.0f);
  EXPECT_FALSE(fs::exists(tmp / "pkg/tokenizer"));

  const CommandResult r = run_moeflux({"inspect", tmp / "pkg"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("qwen3_moe"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(none)"), std::string::npos) << r.out;
  const std::string params = "parameters   " + describe_parameters(c) + "\n";
  EXPECT_NE(r.out.find(params), std::string::npos) << r.out;
  expect_finite_logits(tmp / "pkg", tmp);
}

// --dry-run: the header lines (sizes, parameters) of the full model, nothing written.
TEST(Synth, DryRunWritesNothing) {
  TempDir tmp;
  const CommandResult r = run_moeflux(
      {"synth", "--dry-run", "--family", "deepseek_v3", "--preset", "deepseek-v3", tmp / "pkg"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("parameters: 671.0 B total, 37.6 B active per token (36.6 B without"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("dry run: would write"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_empty(tmp.path())) << "nothing may be written";
}

TEST(Synth, ResidentFormatRequantizesAllButRouters) {
  TempDir tmp;
  synth_ok(with(kTinyQwen35, {"--resident", "q8_0"}), tmp / "q8");
  synth_ok(kTinyQwen35, tmp / "bf16");
  const Package q8 = Package::open(tmp / "q8"), bf16 = Package::open(tmp / "bf16");
  EXPECT_LT(q8.resident_bytes(), bf16.resident_bytes());
  int requantized = 0;
  for (const auto& t : q8.manifest().resident) {
    if (t.shape.size() == 1) continue;
    const bool router = t.name.find("mlp.gate.weight") != std::string::npos ||
                        t.name.find("shared_expert_gate") != std::string::npos;
    const std::string want = router || t.shape[1] % 32 != 0 ? "bf16" : "q8_0";
    if (t.name.find("conv1d") != std::string::npos) continue;  // f32 conv weights
    EXPECT_EQ(format_name(t.fmt), want) << t.name;
    requantized += want == "q8_0";
  }
  EXPECT_GT(requantized, 0);
  expect_finite_logits(tmp / "q8", tmp);
}

TEST(Synth, Qwen35MoePackageLoadsAndRuns) {
  for (const char* fmt : {"q4", "q8_0", "bf16"}) {
    SCOPED_TRACE(fmt);
    TempDir tmp;
    synth_ok(with(kTinyQwen35, {"--experts", fmt}), tmp / "pkg");
    const Package pkg = Package::open(tmp / "pkg");
    const ModelConfig& c = pkg.config();
    EXPECT_EQ(c.family, Family::Qwen3_5Moe);
    EXPECT_EQ(format_name(pkg.manifest().experts.fmt), fmt);
    EXPECT_EQ(c.layer_kind[3], LayerKind::FullAttention);
    // Zero-centred norms at 0, the DeltaNet output norm plain at 1, dt_bias 1, A_log in
    // [log 1, log 16).
    EXPECT_EQ(pkg.vector("layers.3.input_layernorm.weight", 64)[0], 0.0f);
    EXPECT_EQ(pkg.vector("layers.3.self_attn.k_norm.weight", 32)[0], 0.0f);
    EXPECT_EQ(pkg.vector("layers.0.linear_attn.norm.weight", 16)[0], 1.0f);
    EXPECT_EQ(pkg.vector("layers.0.linear_attn.dt_bias", 4)[2], 1.0f);
    for (int h = 0; h < 4; ++h) {
      const float a = pkg.vector("layers.0.linear_attn.A_log", 4)[h];
      EXPECT_GE(a, 0.0f);
      EXPECT_LT(a, std::log(16.0f));
    }
    expect_finite_logits(tmp / "pkg", tmp);
  }
}

// Expert weights keep the 1/sqrt(fan-in) scale through quantization (both code paths), and
// q8_0 codes stay in the quantizer's range.
TEST(Synth, ExpertWeightScale) {
  for (const char* fmt : {"q4", "q8_0", "bf16"})
    for (bool each : {false, true}) {
      SCOPED_TRACE(std::string(fmt) + (each ? " quantize-each" : " template"));
      TempDir tmp;
      std::vector<std::string> args = with(kTinyQwen35, {"--experts", fmt});
      if (each) args.push_back("--quantize-each");
      synth_ok(args, tmp / "pkg");
      const Package pkg = Package::open(tmp / "pkg");
      const ExpertLayout& el = pkg.manifest().experts;
      const std::string layer = read_text(pkg.expert_file_path(0));
      ASSERT_EQ(layer.size(), 8 * el.record_bytes);
      std::vector<float> row(64);
      for (int e : {0, 7}) {
        const auto* rec = reinterpret_cast<const uint8_t*>(layer.data()) + e * el.record_bytes;
        for (const ExpertPart* p : {&el.gate, &el.down}) {
          const MatrixView v = MatrixView::from_record(el.fmt, p->rows, p->cols, rec + p->offset);
          double sq = 0;
          for (size_t r = 0; r < p->rows; ++r) {
            cpu::dequantize_row(v, r, row.data());
            for (size_t k = 0; k < p->cols; ++k) sq += double(row[k]) * row[k];
          }
          const double std_times_sqrt_fanin = std::sqrt(sq / (p->rows * p->cols) * p->cols);
          EXPECT_GT(std_times_sqrt_fanin, 0.8);
          EXPECT_LT(std_times_sqrt_fanin, 1.25);
          if (el.fmt == QuantFormat::q8_0()) {
            for (size_t i = 0; i < p->rows * p->cols; ++i) EXPECT_NE(v.data[i], 0x80);
          }
        }
      }
      // Distinct experts hold distinct records.
      EXPECT_NE(layer.substr(0, el.record_bytes), layer.substr(el.record_bytes, el.record_bytes));
    }
}

TEST(Synth, SameSeedSameBytesAnyThreadCount) {
  TempDir tmp;
  synth_ok(with(kTinyQwen35, {"--seed", "7", "-t", "1"}), tmp / "a");
  synth_ok(with(kTinyQwen35, {"--seed", "7", "-t", "3"}), tmp / "b");
  synth_ok(with(kTinyQwen35, {"--seed", "8"}), tmp / "c");
  const auto a = read_tree(tmp / "a"), b = read_tree(tmp / "b"), c = read_tree(tmp / "c");
  ASSERT_EQ(a.size(), 6u);  // manifest, resident, 4 layer files
  EXPECT_TRUE(a == b) << "same seed must give identical files";
  ASSERT_EQ(a.size(), c.size());
  for (const auto& [name, bytes] : a) {
    if (name == "manifest.json") continue;  // records the seed; the layout is the same
    EXPECT_NE(bytes, c.at(name)) << name << " does not depend on the seed";
    EXPECT_EQ(bytes.size(), c.at(name).size()) << name;
  }
}

TEST(Synth, LayersOption) {
  TempDir tmp;
  synth_ok(with(kTinyQwen35, {"--layers", "2"}), tmp / "pkg");
  const Package pkg = Package::open(tmp / "pkg");
  EXPECT_EQ(pkg.config().num_layers, 2);
  EXPECT_EQ(pkg.config().layer_kind[1], LayerKind::LinearAttention);
  expect_finite_logits(tmp / "pkg", tmp);
}

TEST(SynthErrors, InvalidArgumentsLeaveNothing) {
  TempDir tmp;
  expect_clean_failure(
      run_moeflux({"synth", "-q", "--family", "qwen3_moe", "--preset", "nope", tmp / "pkg"}),
      "--preset");
  expect_clean_failure(run_moeflux({"synth", "-q", "--family", "qwen3_moe", "--preset",
                                    "tiny-qwen3.5-moe", tmp / "pkg"}),
                       "--family");
  expect_clean_failure(
      run_moeflux(with(with({"synth", "-q"}, kTinyQwen3), {"--layers", "5", tmp / "pkg"})),
      "--layers");
  expect_only(tmp, {});
}

TEST(SynthErrors, UnwritableParentLeavesNothing) {
  TempDir tmp;
  std::ofstream(tmp / "file") << "not a directory";
  const CommandResult r = run_moeflux(with(with({"synth", "-q"}, kTinyQwen3), {tmp / "file/pkg"}));
  expect_clean_failure(r, tmp / "file");
  expect_only(tmp, {"file"});
}

TEST(SynthErrors, ExistingOutputNeedsForce) {
  TempDir tmp;
  fs::create_directories(tmp / "pkg");
  expect_clean_failure(run_moeflux(with(with({"synth", "-q"}, kTinyQwen3), {tmp / "pkg"})),
                       "--force");
  synth_ok(with(kTinyQwen3, {"--force"}), tmp / "pkg");
  EXPECT_NO_THROW(Package::open(tmp / "pkg"));
  expect_only(tmp, {"pkg"});
}

// SIGINT in the middle of a large synth: either it had finished (a whole package) or nothing at
// all is left, never a partial directory.
TEST(SynthErrors, InterruptLeavesNothing) {
  TempDir tmp;
  const std::string cmd = "timeout -s INT 0.5 " + shell_quote(MOEFLUX_BINARY) +
                          " synth -q --family qwen3_moe --preset qwen3-30b-a3b --layers 1 " +
                          shell_quote(tmp / "pkg") + " 2>" + shell_quote(tmp / "err");
  const int status = std::system(cmd.c_str());
  const std::string err = read_text(tmp / "err");
  fs::remove(tmp / "err");
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    EXPECT_NO_THROW(Package::open(tmp / "pkg"));
    expect_only(tmp, {"pkg"});
  } else {
    EXPECT_NE(err.find("interrupted"), std::string::npos) << err;
    expect_only(tmp, {});
  }
}

}  // namespace
}  // namespace moeflux::test
