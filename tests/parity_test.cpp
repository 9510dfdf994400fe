// End to end parity with Hugging Face transformers: convert each committed fixture, evaluate
// its tokens with `moeflux logits`, and compare with the float64 reference logits the
// generator (tests/fixtures/generate.py) recorded.
//
// Criteria, at every position t:
//   relative L2 error ||ours_t - ref_t|| / ||ref_t|| <= tolerance, and
//   argmax(ours_t) == argmax(ref_t) wherever the reference's top-2 margin is clear
//   (> 1% of the row's standard deviation).
// Every case runs twice: chunked (the prompt path: matrix-matrix kernels, attention over a chunk,
// the chunked DeltaNet) and token by token (`--prefill-chunk 1`, the decode path: matrix-vector
// kernels, one KV-cache append and one DeltaNet state step per token).
// Tolerance: 1e-3 (docs/DESIGN.md) for every format. The quantized references (logits_q8_0 /
// logits_q4) were computed by transformers from expert weights quantized and dequantized with the
// same algorithm as ours (tests/fixtures/README.md), so the only differences left are float32 vs
// float64 arithmetic, as for bf16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "formats/npy.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

struct ParityCase {
  std::string fixture;
  std::string format;  // "" = keep the checkpoint's format
  std::string reference;
  bool decode = false;  // token by token (--prefill-chunk 1)
};

void PrintTo(const ParityCase& c, std::ostream* os) {
  *os << c.fixture << " (" << (c.format.empty() ? "native" : c.format)
      << (c.decode ? ", token by token" : ", chunked") << ")";
}

std::string case_name(const testing::TestParamInfo<ParityCase>& info) {
  return info.param.fixture + "_" + (info.param.format.empty() ? "native" : info.param.format) +
         (info.param.decode ? "_decode" : "");
}

class Parity : public testing::TestWithParam<ParityCase> {};

TEST_P(Parity, MatchesTransformers) {
  const ParityCase& pc = GetParam();
  const std::string fx = fixture_dir(pc.fixture);
  ASSERT_TRUE(fs::exists(fx + "/hf/config.json")) << "missing fixture " << fx;
  TempDir tmp;
  std::vector<std::string> conv = {"convert", fx + "/hf", tmp / "pkg", "-q"};
  if (!pc.format.empty()) conv.insert(conv.end(), {"--experts", pc.format});
  const CommandResult c = run_moeflux(conv);
  ASSERT_EQ(c.exit_code, 0) << c.err;

  const std::vector<int> tokens = fixture_tokens(pc.fixture);
  std::vector<std::string> args = {"logits",   "-m",  tmp / "pkg", "--tokens",
                                   join_ints(tokens), "--out", tmp / "logits.npy"};
  if (pc.decode) args.insert(args.end(), {"--prefill-chunk", "1"});
  const CommandResult l = run_moeflux(args);
  ASSERT_EQ(l.exit_code, 0) << l.err;

  const NpyArray ours = read_npy(tmp / "logits.npy");
  const NpyArray ref = read_npy(fx + "/" + pc.reference);
  ASSERT_EQ(ours.shape, ref.shape);
  ASSERT_EQ(ref.shape.size(), 2u);
  ASSERT_EQ(ref.shape[0], tokens.size());
  const size_t V = ref.shape[1];
  double worst = 0;
  int clear_positions = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const double* r = &ref.values[t * V];
    const double* o = &ours.values[t * V];
    double num = 0, den = 0, mean = 0;
    for (size_t v = 0; v < V; ++v) {
      num += (o[v] - r[v]) * (o[v] - r[v]);
      den += r[v] * r[v];
      mean += r[v];
    }
    mean /= V;
    double var = 0;
    for (size_t v = 0; v < V; ++v) var += (r[v] - mean) * (r[v] - mean);
    const double rel = std::sqrt(num / den);
    worst = std::max(worst, rel);
    EXPECT_LE(rel, 1e-3) << "position " << t;
    std::vector<size_t> idx(V);
    for (size_t v = 0; v < V; ++v) idx[v] = v;
    std::partial_sort(idx.begin(), idx.begin() + 2, idx.end(), [&](size_t a, size_t b) { return r[a] > r[b]; });
    const double margin = r[idx[0]] - r[idx[1]];
    if (margin > 0.01 * std::sqrt(var / V)) {
      ++clear_positions;
      const size_t our_top = std::max_element(o, o + V) - o;
      EXPECT_EQ(our_top, idx[0]) << "argmax differs at position " << t;
    }
  }
  EXPECT_GT(clear_positions, 0);
  std::printf("[parity] %s %s %s: worst relative L2 error %.3g over %zu positions\n",
              pc.fixture.c_str(), pc.format.empty() ? "native" : pc.format.c_str(),
              pc.decode ? "token by token" : "chunked", worst, tokens.size());
}

std::vector<ParityCase> cases() {
  std::vector<ParityCase> v;
  for (const char* fx : {"qwen3_moe_sharded", "qwen3_moe_yarn", "qwen3_5_moe_vl", "qwen3_5_moe_text",
                         "deepseek_v3_tiny", "glm4_moe_tiny"}) {
    v.push_back({fx, "", "logits_bf16.npy"});
    v.push_back({fx, "q8_0", "logits_q8_0.npy"});
    v.push_back({fx, "q4", "logits_q4.npy"});
  }
  v.push_back({"qwen3_moe_mlx4", "", "logits_bf16.npy"});
  v.push_back({"qwen3_5_moe_mlx4", "", "logits_bf16.npy"});
  // config.json exactly as transformers' own save_pretrained() writes it (5.x spelling).
  v.push_back({"qwen3_moe_saved", "", "logits_bf16.npy"});
  v.push_back({"qwen3_5_moe_saved", "", "logits_bf16.npy"});
  v.push_back({"deepseek_v3_saved", "", "logits_bf16.npy"});
  v.push_back({"glm4_moe_saved", "", "logits_bf16.npy"});
  // DeepSeek-V3: YaRN with mscale / mscale_all_dim, q_lora_rank null; the published FP8 layout
  // (reference: bf16(fp8 · scale), what the converter writes).
  v.push_back({"deepseek_v3_yarn", "", "logits_bf16.npy"});
  v.push_back({"deepseek_v3_fp8", "", "logits_bf16.npy"});
  const size_t chunked = v.size();
  for (size_t i = 0; i < chunked; ++i) {
    v.push_back(v[i]);
    v.back().decode = true;
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Parity, testing::ValuesIn(cases()), case_name);

}  // namespace
}  // namespace moeflux::test
