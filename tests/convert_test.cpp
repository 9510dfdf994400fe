// What `convert` records about where a package came from: the checkpoint directory's name only
// (a package shared with others must not carry the converting machine's paths), the
// checkpoint's config verbatim, and its chat template (copied verbatim, checked).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "core/dtype.hpp"
#include "formats/package.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

TEST(Convert, ManifestNamesTheCheckpointWithoutItsPath) {
  TempDir tmp;
  const std::string hf = fixture_dir("qwen3_moe_sharded") + "/hf/";  // trailing slash on purpose
  const CommandResult r = run_moeflux({"convert", hf, tmp / "pkg", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Package pkg = Package::open(tmp / "pkg");
  EXPECT_EQ(pkg.manifest().source, "hf");
  const nlohmann::json cfg =
      nlohmann::json::parse(read_text(fixture_dir("qwen3_moe_sharded") + "/hf/config.json"));
  EXPECT_EQ(pkg.manifest().source_config, cfg);
}

// float8 e4m3fn, every code, against its definition: (-1)^s 2^(e-7) (1 + m/8), subnormals
// 2^-6 m/8, 0x7f / 0xff NaN.
TEST(Convert, Float8E4m3DecodesEveryCode) {
  for (int v = 0; v < 256; ++v) {
    const int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
    const float got = f8e4m3_to_f32(static_cast<uint8_t>(v));
    if ((v & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(got)) << v;
      continue;
    }
    const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
    EXPECT_EQ(got, static_cast<float>(s ? -mag : mag)) << v;
  }
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);  // the largest finite value
}

// DeepSeek-V3's multi-token-prediction layer is in the checkpoint and left out of the package,
// with a note; its tensors are not reported as unused.
TEST(Convert, MtpLayerIsSkippedWithANote) {
  TempDir tmp;
  const CommandResult r =
      run_moeflux({"convert", fixture_dir("deepseek_v3_tiny") + "/hf", tmp / "pkg"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("1 multi-token-prediction layer(s)"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("not used"), std::string::npos) << r.err;
  const Package pkg = Package::open(tmp / "pkg");
  EXPECT_EQ(pkg.config().num_layers, 3);
  // --k above the experts of the groups the router keeps (4 groups of 4, keep 2) is refused.
  const CommandResult k = run_moeflux(
      {"logits", "-m", tmp / "pkg", "--tokens", "1,2", "--k", "9", "--out", tmp / "l.npy"});
  EXPECT_NE(k.exit_code, 0);
  EXPECT_NE(k.err.find("--k 9 exceeds the 8 experts of the groups the router keeps"),
            std::string::npos)
      << k.err;
}

// The chat template travels into the package as the checkpoint has it; one our interpreter
// cannot parse still converts, with a warning that says where it fails.
TEST(Convert, CarriesAndChecksTheChatTemplate) {
  TempDir tmp;
  fs::copy(fixture_dir("qwen3_moe_sharded") + "/hf", tmp / "hf");
  const std::string glm = read_text(fixture_dir("chat/glm4_5.jinja"));
  { std::ofstream(tmp / "hf/chat_template.jinja", std::ios::binary) << glm; }
  CommandResult r = run_moeflux({"convert", tmp / "hf", tmp / "pkg", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << r.err;
  const Package pkg = Package::open(tmp / "pkg");
  const auto& files = pkg.manifest().tokenizer_files;
  EXPECT_NE(std::find(files.begin(), files.end(), "tokenizer/chat_template.jinja"), files.end());
  EXPECT_EQ(read_text(tmp / "pkg/tokenizer/chat_template.jinja"), glm);

  { std::ofstream(tmp / "hf/chat_template.jinja", std::ios::binary) << "ok\n{% if x %}open"; }
  r = run_moeflux({"convert", tmp / "hf", tmp / "pkg2", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("[convert] warning: chat template:2:1: 'if' block not closed"),
            std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace moeflux::test
