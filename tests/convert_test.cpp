// What `convert` records about where a package came from: the checkpoint directory's name only
// (a package shared with others must not carry the converting machine's paths), the
// checkpoint's config verbatim, and its chat template (copied verbatim, checked).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

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
