// What `convert` records about where a package came from: the checkpoint directory's name only
// (a package shared with others must not carry the converting machine's paths), and the
// checkpoint's config verbatim.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace moeflux::test
