// Storage and memory ceilings: each measurement returns a positive figure with its basis on a
// tiny synthetic package (no timing assertions: this only checks the functions work).
#include "experts/ceilings.hpp"

#include <gtest/gtest.h>

#include "convert/synth.hpp"
#include "core/error.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

std::vector<std::string> tiny_package_files(const TempDir& tmp) {
  SynthOptions o;
  o.preset = "tiny-qwen3.5-moe";
  o.progress = false;
  synthesize_package(tmp / "pkg", o);
  const Package pkg = Package::open(tmp / "pkg");
  return package_expert_files(pkg);
}

CeilingOptions quick() {
  CeilingOptions o;
  o.max_seconds = 0.05;
  o.block_bytes = 64 << 10;
  o.threads = 2;
  o.copy_buffer_bytes = 4 << 20;
  return o;
}

void expect_positive(const Ceiling& c) {
  EXPECT_TRUE(c.measured) << describe(c);
  EXPECT_GT(c.gb_per_s, 0) << describe(c);
  EXPECT_GT(c.bytes, 0u);
  EXPECT_GT(c.seconds, 0);
  EXPECT_EQ(c.threads, 2);
  EXPECT_FALSE(c.note.empty());
}

TEST(Ceilings, PositiveOnTinyPackage) {
  TempDir tmp;
  const std::vector<std::string> files = tiny_package_files(tmp);
  ASSERT_EQ(files.size(), 4u);

  const Ceiling direct = measure_direct_read(files, quick());
  if (direct.measured) {
    expect_positive(direct);
    // One pass at most: every byte of the four layer files, no more.
    uint64_t total = 0;
    for (const auto& f : files) total += fs::file_size(f);
    EXPECT_LE(direct.bytes, total);
  } else {  // a file system without O_DIRECT (tmpfs) says so instead of a number
    EXPECT_NE(direct.note.find("O_DIRECT"), std::string::npos) << direct.note;
  }

  const Ceiling cached = measure_page_cache_read(files, quick());
  expect_positive(cached);
  EXPECT_NE(describe(cached).find("GB/s"), std::string::npos);

  expect_positive(measure_memcpy(quick()));
}

TEST(Ceilings, ExpertBatchesReadWholeBatchesOfDistinctRecords) {
  TempDir tmp;
  tiny_package_files(tmp);
  const Package pkg = Package::open(tmp / "pkg");
  ReaderOptions io;
  io.threads = 2;
  const size_t record = pkg.manifest().experts.record_bytes;
  const int k = pkg.config().top_k;
  const Ceiling cached = measure_expert_batches(pkg, io, k, quick());
  expect_positive(cached);
  EXPECT_EQ(cached.bytes % (record * k), 0u) << "a partial batch was counted";
  EXPECT_NE(cached.note.find("batches of " + std::to_string(k)), std::string::npos) << cached.note;
  // K beyond the expert count reads every expert once per batch.
  const Ceiling all = measure_expert_batches(pkg, io, 1 << 20, quick());
  EXPECT_EQ(all.bytes % (record * pkg.config().num_experts), 0u);
  io.mode = IoMode::Direct;
  const Ceiling direct = measure_expert_batches(pkg, io, k, quick());
  if (direct.measured) {
    EXPECT_EQ(direct.bytes % (record * k), 0u);
  } else {  // tmpfs: no O_DIRECT, and the note says so
    EXPECT_NE(direct.note.find("O_DIRECT"), std::string::npos) << direct.note;
  }
}

TEST(Ceilings, MissingFileIsAnError) {
  TempDir tmp;
  try {
    measure_page_cache_read({tmp / "nope.bin"}, quick());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nope.bin"), std::string::npos) << e.what();
  }
  EXPECT_THROW(measure_direct_read({tmp / "nope.bin"}, quick()), Error);
}

}  // namespace
}  // namespace moeflux::test
