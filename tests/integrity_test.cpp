// Package checksums (format version 2): `moeflux verify`, the check of resident tensors at open,
// the check of expert records as the readers land them (both backends), `--no-verify`, and
// packages of format version 1 (no checksums: they open with a warning).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "core/crc32c.hpp"
#include "core/error.hpp"
#include "formats/package.hpp"
#include "runtime/session.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

using nlohmann::json;

// XORs one byte of `path` at `offset` with 0x40 (twice restores it).
void flip_byte(const std::string& path, uint64_t offset) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  uint8_t b = 0;
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b ^= 0x40;
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  ::close(fd);
}

class Integrity : public testing::Test {
 protected:
  void SetUp() override {
    const CommandResult r =
        run_moeflux({"convert", fixture_dir("qwen3_moe_sharded") + "/hf", pkg(), "-q"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::string pkg() const { return tmp_ / "pkg"; }
  json manifest() const { return json::parse(read_text(pkg() + "/manifest.json")); }
  void write_manifest(const json& m) const {
    std::ofstream(pkg() + "/manifest.json", std::ios::trunc) << m.dump(1);
  }
  // The last MoE layer and its file.
  int last_moe_layer() const {
    const json m = manifest();  // (a reference into the temporary would dangle)
    const json& moe = m["config"]["layer_is_moe"];
    int l = 0;
    for (size_t i = 0; i < moe.size(); ++i)
      if (moe[i].get<bool>()) l = static_cast<int>(i);
    return l;
  }
  uint64_t record_bytes() const { return manifest()["experts"]["record_bytes"].get<uint64_t>(); }
  int num_experts() const { return manifest()["config"]["num_experts"].get<int>(); }

  TempDir tmp_;
};

TEST_F(Integrity, ConvertRecordsChecksumsThatVerify) {
  const json m = manifest();
  EXPECT_EQ(m["version"], kPackageVersion);
  EXPECT_EQ(m["checksum"], "crc32c");
  for (const json& t : m["resident"]["tensors"]) EXPECT_TRUE(t.contains("crc32c")) << t["name"];
  // The manifest's record checksum is the CRC-32C of the whole record on disk.
  const int l = last_moe_layer();
  const std::string file = read_text(pkg() + "/" + m["experts"]["files"][l].get<std::string>());
  const uint64_t rb = record_bytes();
  EXPECT_EQ(m["experts"]["record_crc32c"][l][3].get<uint32_t>(), crc32c(file.data() + 3 * rb, rb));

  const CommandResult r = run_moeflux({"verify", pkg()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("ok: "), std::string::npos) << r.out;
  EXPECT_EQ(r.err, "");  // stderr is not a terminal here: no progress bar
}

TEST_F(Integrity, VerifyNamesTheFirstCorruptRecord) {
  const int l = last_moe_layer();
  const std::string file = pkg() + "/" + expert_file_name(l);
  flip_byte(file, 9 * record_bytes() + 777);
  flip_byte(file, 12 * record_bytes() + 5);
  const CommandResult r = run_moeflux({"verify", pkg(), "-t", "4"});
  expect_clean_failure(r, file + ": expert 9 of layer " + std::to_string(l) + " is corrupt");
  // Padding counts too: a record is checked whole.
  flip_byte(file, 9 * record_bytes() + 777);
  flip_byte(file, 12 * record_bytes() + 5);
  flip_byte(file, 1 * record_bytes() - 1);
  expect_clean_failure(run_moeflux({"verify", pkg()}),
                       "expert 0 of layer " + std::to_string(l) + " is corrupt");
}

TEST_F(Integrity, CorruptResidentTensorCaughtAtOpenAndByVerify) {
  const json m = manifest();
  std::string name;
  uint64_t offset = 0;
  for (const json& t : m["resident"]["tensors"])
    if (t["name"] == "layers.1.self_attn.o_proj.weight") {
      name = t["name"];
      offset = t["offset"].get<uint64_t>() + 100;
    }
  ASSERT_FALSE(name.empty());
  flip_byte(pkg() + "/resident.bin", offset);
  const std::string needle = pkg() + "/resident.bin: tensor '" + name + "' is corrupt";
  expect_clean_failure(run_moeflux({"verify", pkg()}), needle);
  TempDir t;
  expect_clean_failure(
      run_moeflux({"logits", "-m", pkg(), "--tokens", "1,2", "--out", t / "o.npy"}), needle);
  try {
    Package::open(pkg());
    FAIL() << "a corrupt resident tensor opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  PackageOpenOptions no_check;
  no_check.verify_resident = false;
  EXPECT_NO_THROW(Package::open(pkg(), no_check));
}

// A record corrupted on disk fails the read that lands it, naming layer and expert, with either
// backend; --no-verify turns the check off; the session is usable again after clear().
TEST_F(Integrity, StreamingReadsAreVerified) {
  const std::vector<int> tokens = fixture_tokens("qwen3_moe_sharded");
  auto model = Model::open(pkg());
  EngineOptions base;
  base.threads = 2;
  base.prefill_chunk = 1;
  std::vector<float> clean;
  {
    Session s(*model, base);
    clean = s.eval_token(tokens[0]);
  }
  const int l = last_moe_layer();
  const std::string file = pkg() + "/" + expert_file_name(l);
  auto corrupt_layer = [&] {  // every record of the layer: whichever the router picks
    for (int e = 0; e < num_experts(); ++e) flip_byte(file, e * record_bytes() + 64);
  };
  for (IoBackend backend : {IoBackend::Threads, IoBackend::IoUring}) {
    SCOPED_TRACE(io_backend_name(backend));
    EngineOptions o = base;
    o.stream.io.backend = backend;
    std::unique_ptr<Session> s;
    try {
      s = std::make_unique<Session>(*model, o);
    } catch (const Error& e) {
      ASSERT_NE(std::string(e.what()).find("io_uring unavailable"), std::string::npos) << e.what();
      continue;
    }
    corrupt_layer();
    try {
      s->eval_token(tokens[0]);
      ADD_FAILURE() << "a corrupt record was used";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(file + ": expert "), std::string::npos) << what;
      EXPECT_NE(what.find(" of layer " + std::to_string(l) + " is corrupt"), std::string::npos)
          << what;
    }
    EXPECT_GT(s->streamer().reader().stats().verified, 0u);
    // Unchecked, the corrupt bytes go through (and change the result).
    EngineOptions unchecked = o;
    unchecked.stream.io.verify = false;
    {
      Session u(*model, unchecked);
      EXPECT_NO_THROW(u.eval_token(tokens[0]));
      EXPECT_EQ(u.streamer().reader().stats().verified, 0u);
    }
    corrupt_layer();  // repaired
    s->clear();
    const std::vector<float>& again = s->eval_token(tokens[0]);
    ASSERT_EQ(again.size(), clean.size());
    EXPECT_EQ(std::memcmp(again.data(), clean.data(), clean.size() * sizeof(float)), 0)
        << "logits changed after a corrupt read and clear()";
  }
}

// Format version 1 (before checksums): opens with a one-line warning and runs unverified;
// `verify` refuses it.
TEST_F(Integrity, Version1PackageOpensWithAWarning) {
  json m = manifest();
  m["version"] = 1;
  m.erase("checksum");
  m["experts"].erase("record_crc32c");
  for (json& t : m["resident"]["tensors"]) t.erase("crc32c");
  write_manifest(m);
  const std::string warning = "moeflux: warning: " + pkg() +
                              ": package format version 1 has no checksums, its data is not "
                              "verified (convert it again to add them)\n";
  const CommandResult i = run_moeflux({"inspect", pkg()});
  EXPECT_EQ(i.exit_code, 0) << i.err;
  EXPECT_EQ(i.err, warning);
  EXPECT_NE(i.out.find("format version 1"), std::string::npos) << i.out;
  TempDir t;
  const CommandResult l =
      run_moeflux({"logits", "-m", pkg(), "--tokens", "1,2", "--out", t / "o.npy"});
  EXPECT_EQ(l.exit_code, 0) << l.err;
  EXPECT_EQ(l.err.rfind(warning, 0), 0u) << l.err;  // the first line; the summary follows
  EXPECT_EQ(l.err.find("warning", warning.size()), std::string::npos) << l.err;  // once
  expect_clean_failure(run_moeflux({"verify", pkg()}), "version 1 has no checksums");
}

TEST_F(Integrity, ChecksumFieldsOfTheManifestAreChecked) {
  const json good = manifest();
  struct Lie {
    const char* what;
    std::function<void(json&)> edit;
    const char* message;
  };
  const std::vector<Lie> lies = {
      {"short list", [](json& m) { m["experts"]["record_crc32c"][0].erase(0); }, "record_crc32c"},
      {"no list", [](json& m) { m["experts"].erase("record_crc32c"); }, "record_crc32c"},
      {"negative", [](json& m) { m["experts"]["record_crc32c"][0][0] = -1; }, "checksum"},
      {"too large", [](json& m) { m["resident"]["tensors"][0]["crc32c"] = 1ll << 32; }, "crc32c"},
      {"tensor without", [](json& m) { m["resident"]["tensors"][0].erase("crc32c"); }, "crc32c"},
      {"other algorithm", [](json& m) { m["checksum"] = "md5"; }, "checksum"},
  };
  for (const Lie& lie : lies) {
    SCOPED_TRACE(lie.what);
    json m = good;
    lie.edit(m);
    write_manifest(m);
    expect_clean_failure(run_moeflux({"inspect", pkg()}), lie.message);
  }
}

}  // namespace
}  // namespace moeflux::test
