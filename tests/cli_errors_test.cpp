// Bad input through the command line: every case must end with exactly one line on stderr,
// "moeflux: error: ...", that names the offending file or argument, exit code 2 when the command
// line is at fault and 1 otherwise (README), and no partial output left behind.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <functional>

#include "test_util.hpp"

namespace moeflux::test {
namespace {

const char* kFixture = "qwen3_moe_sharded";

// A writable copy of the fixture's checkpoint.
std::string copy_checkpoint(const TempDir& tmp) {
  const std::string dst = tmp / "hf";
  fs::copy(fixture_dir(kFixture) + "/hf", dst, fs::copy_options::recursive);
  return dst;
}

std::string first_shard(const std::string& dir) {
  std::vector<std::string> shards;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") shards.push_back(e.path().string());
  std::sort(shards.begin(), shards.end());
  return shards.at(0);
}

void expect_no_package(const TempDir& tmp) {
  for (const auto& e : fs::directory_iterator(tmp.path()))
    EXPECT_EQ(e.path().filename().string().find("pkg"), std::string::npos)
        << "left behind: " << e.path();
}

TEST(ConvertErrors, MissingDirectory) {
  TempDir tmp;
  expect_clean_failure(run_moeflux({"convert", tmp / "nope", tmp / "pkg", "-q"}), tmp / "nope");
  expect_no_package(tmp);
}

TEST(ConvertErrors, TruncatedSafetensors) {
  TempDir tmp;
  const std::string hf = copy_checkpoint(tmp);
  const std::string shard = first_shard(hf);
  fs::resize_file(shard, fs::file_size(shard) / 2);
  expect_clean_failure(run_moeflux({"convert", hf, tmp / "pkg", "-q"}), shard);
  expect_no_package(tmp);
}

TEST(ConvertErrors, HeaderOffsetsLie) {
  TempDir tmp;
  const std::string hf = copy_checkpoint(tmp);
  const std::string shard = first_shard(hf);
  std::string bytes = read_text(shard);
  // Change the first digit of the first tensor's end offset: the header keeps its length, but
  // the range no longer matches the tensor's size (or leaves the file).
  const size_t p = bytes.find("\"data_offsets\":[");
  ASSERT_NE(p, std::string::npos);
  const size_t comma = bytes.find(',', p);
  ASSERT_NE(comma, std::string::npos);
  bytes[comma + 1] = bytes[comma + 1] == '9' ? '1' : '9';  // first digit of the end offset
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << bytes;
  expect_clean_failure(run_moeflux({"convert", hf, tmp / "pkg", "-q"}), shard);
  expect_no_package(tmp);
}

TEST(ConvertErrors, UnknownModelType) {
  TempDir tmp;
  const std::string hf = copy_checkpoint(tmp);
  auto cfg = nlohmann::json::parse(read_text(hf + "/config.json"));
  cfg["model_type"] = "llama";
  std::ofstream(hf + "/config.json", std::ios::trunc) << cfg.dump();
  const CommandResult r = run_moeflux({"convert", hf, tmp / "pkg", "-q"});
  expect_clean_failure(r, "config.json");
  EXPECT_NE(r.err.find("llama"), std::string::npos);
  expect_no_package(tmp);
}

TEST(ConvertErrors, MissingTensor) {
  TempDir tmp;
  const std::string hf = copy_checkpoint(tmp);
  auto cfg = nlohmann::json::parse(read_text(hf + "/config.json"));
  cfg["num_hidden_layers"] = cfg["num_hidden_layers"].get<int>() + 1;  // a layer that isn't there
  std::ofstream(hf + "/config.json", std::ios::trunc) << cfg.dump();
  // Whichever tensor of the missing layer is looked for first, the error names it.
  expect_clean_failure(run_moeflux({"convert", hf, tmp / "pkg", "-q"}), "model.layers.4.");
  expect_no_package(tmp);
}

// OUT_DIR goes in an existing directory: a mistyped path fails before any work, creating nothing.
TEST(ConvertErrors, OutputDirectoryMustBeInAnExistingDirectory) {
  TempDir tmp;
  const CommandResult r =
      run_moeflux({"convert", fixture_dir(kFixture) + "/hf", tmp / "no/such/pkg", "-q"});
  expect_clean_failure(r, "directory " + tmp / "no/such" + " does not exist");
  EXPECT_FALSE(fs::exists(tmp / "no"));
  const CommandResult s = run_moeflux({"synth", "--family", "qwen3_moe", "--preset",
                                       "qwen3-30b-a3b", "--layers", "1", tmp / "no/pkg", "-q"});
  expect_clean_failure(s, "directory " + tmp / "no" + " does not exist");
  EXPECT_FALSE(fs::exists(tmp / "no"));
}

TEST(ConvertErrors, ExistingOutputNeedsForce) {
  TempDir tmp;
  fs::create_directories(tmp / "pkg");
  expect_clean_failure(run_moeflux({"convert", fixture_dir(kFixture) + "/hf", tmp / "pkg", "-q"}),
                       "--force");
}

class LogitsErrors : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempDir;
    const CommandResult r =
        run_moeflux({"convert", fixture_dir(kFixture) + "/hf", *tmp_ / "pkg", "-q"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() { delete tmp_; }
  // A private copy of the converted package.
  std::string package_copy(const TempDir& t) {
    fs::copy(*tmp_ / "pkg", t / "pkg", fs::copy_options::recursive);
    return t / "pkg";
  }
  // One of the package's expert layer files, "" if none.
  static std::string a_layer_file(const std::string& pkg) {
    std::string layer;
    for (const auto& e : fs::directory_iterator(pkg + "/experts")) layer = e.path().string();
    return layer;
  }
  static TempDir* tmp_;
};
TempDir* LogitsErrors::tmp_ = nullptr;

TEST_F(LogitsErrors, TokenOutOfRange) {
  TempDir t;
  const CommandResult r =
      run_moeflux({"logits", "-m", *tmp_ / "pkg", "--tokens", "1,99999999", "--out", t / "o.npy"});
  expect_usage_error(r, "--tokens");
  EXPECT_FALSE(fs::exists(t / "o.npy"));
}

TEST_F(LogitsErrors, MalformedTokenList) {
  TempDir t;
  expect_usage_error(
      run_moeflux({"logits", "-m", *tmp_ / "pkg", "--tokens", "1,x", "--out", t / "o.npy"}),
      "--tokens");
  EXPECT_FALSE(fs::exists(t / "o.npy"));
}

TEST_F(LogitsErrors, MissingPackage) {
  TempDir t;
  expect_clean_failure(
      run_moeflux({"logits", "-m", t / "none", "--tokens", "1", "--out", t / "o.npy"}), t / "none");
}

TEST_F(LogitsErrors, TruncatedExpertFile) {
  TempDir t;
  const std::string pkg = package_copy(t);
  const std::string layer = a_layer_file(pkg);
  ASSERT_FALSE(layer.empty());
  fs::resize_file(layer, fs::file_size(layer) - 4096);
  expect_clean_failure(run_moeflux({"logits", "-m", pkg, "--tokens", "1,2", "--out", t / "o.npy"}),
                       layer);
  EXPECT_FALSE(fs::exists(t / "o.npy"));
}

TEST_F(LogitsErrors, TruncatedResidentFile) {
  TempDir t;
  const std::string pkg = package_copy(t);
  fs::resize_file(pkg + "/resident.bin", fs::file_size(pkg + "/resident.bin") / 2);
  expect_clean_failure(run_moeflux({"logits", "-m", pkg, "--tokens", "1", "--out", t / "o.npy"}),
                       "resident.bin");
}

TEST_F(LogitsErrors, CorruptManifest) {
  TempDir t;
  const std::string pkg = package_copy(t);
  std::ofstream(pkg + "/manifest.json", std::ios::trunc)
      << "{\"format\": \"moeflux-package\", \"version\": 1,";
  expect_clean_failure(run_moeflux({"logits", "-m", pkg, "--tokens", "1", "--out", t / "o.npy"}),
                       "manifest.json");
}

TEST_F(LogitsErrors, ManifestShapeLies) {
  TempDir t;
  const std::string pkg = package_copy(t);
  auto m = nlohmann::json::parse(read_text(pkg + "/manifest.json"));
  for (auto& tensor : m["resident"]["tensors"])
    if (tensor["name"] == "norm.weight") tensor["shape"] = {12345};
  std::ofstream(pkg + "/manifest.json", std::ios::trunc) << m.dump();
  expect_clean_failure(run_moeflux({"logits", "-m", pkg, "--tokens", "1", "--out", t / "o.npy"}),
                       "norm.weight");
}

// Manifests that lie in ways the fuzzer found or that could point the reader elsewhere: each is
// refused with a message naming the field, never undefined behaviour or a read outside the
// package.
TEST_F(LogitsErrors, ManifestFieldLies) {
  struct Lie {
    const char* what;
    std::function<void(nlohmann::json&)> edit;
    const char* message;
  };
  const std::vector<Lie> lies = {
      {"float size", [](nlohmann::json& m) { m["config"]["hidden_size"] = 3.14e126; },
       "hidden_size"},
      {"negative size", [](nlohmann::json& m) { m["config"]["num_experts"] = -4; }, "num_experts"},
      {"string size", [](nlohmann::json& m) { m["config"]["vocab_size"] = "many"; }, "vocab_size"},
      {"eps a string", [](nlohmann::json& m) { m["config"]["rms_norm_eps"] = "tiny"; },
       "rms_norm_eps"},
      {"float offset", [](nlohmann::json& m) { m["resident"]["tensors"][0]["offset"] = 1.5; },
       "offset"},
      {"huge shape",
       [](nlohmann::json& m) {
         m["resident"]["tensors"][0]["shape"] = {int64_t{1} << 31, int64_t{1} << 31};
       },
       "large"},
      {"expert file outside the package",
       [](nlohmann::json& m) {
         for (auto& f : m["experts"]["files"])
           if (!f.get<std::string>().empty()) f = "../../../etc/passwd";
       },
       "must be 'experts/layer_"},
      {"tokenizer file outside the package",
       [](nlohmann::json& m) { m["tokenizer_files"] = {"../../../etc/passwd"}; },
       "tokenizer file '../../../etc/passwd' is not a file name under tokenizer/"},
      {"tokenizer file absolute", [](nlohmann::json& m) { m["tokenizer_files"] = {"/etc/passwd"}; },
       "tokenizer file"},
      {"tokenizer file escaping its directory",
       [](nlohmann::json& m) { m["tokenizer_files"] = {"tokenizer/../../x/tokenizer.json"}; },
       "tokenizer file"},
      {"tokenizer file dot-dot", [](nlohmann::json& m) { m["tokenizer_files"] = {"tokenizer/.."}; },
       "tokenizer file"},
      {"format not a string", [](nlohmann::json& m) { m["format"] = 7; }, "not a moeflux package"},
      {"version a string", [](nlohmann::json& m) { m["version"] = "1"; }, "version"},
  };
  for (const Lie& lie : lies) {
    SCOPED_TRACE(lie.what);
    TempDir t;
    const std::string pkg = package_copy(t);
    auto m = nlohmann::json::parse(read_text(pkg + "/manifest.json"));
    lie.edit(m);
    std::ofstream(pkg + "/manifest.json", std::ios::trunc) << m.dump();
    expect_clean_failure(run_moeflux({"logits", "-m", pkg, "--tokens", "1", "--out", t / "o.npy"}),
                         lie.message);
  }
}

TEST_F(LogitsErrors, FutureVersion) {
  TempDir t;
  const std::string pkg = package_copy(t);
  auto m = nlohmann::json::parse(read_text(pkg + "/manifest.json"));
  m["version"] = 99;
  std::ofstream(pkg + "/manifest.json", std::ios::trunc) << m.dump();
  expect_clean_failure(run_moeflux({"logits", "-m", pkg, "--tokens", "1", "--out", t / "o.npy"}),
                       "version");
}

// Outputs (core/output_file.hpp) through a command: checked before any work; FIFOs and devices
// written in place; symbolic links followed.
TEST_F(LogitsErrors, OutputPathsAreCheckedBeforeTheModelIsOpened) {
  TempDir t;
  // The package is missing too: the error names the output, so it was checked first.
  CommandResult r =
      run_moeflux({"logits", "-m", t / "none", "--tokens", "1", "--out", t / "no/dir/o.npy"});
  expect_clean_failure(r, "--out: cannot write " + t / "no/dir/o.npy");
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
  r = run_moeflux({"logits", "-m", t / "none", "--tokens", "1", "--out", t / "o.npy",
                   "--routing-trace", t.path().string()});
  expect_clean_failure(r, "--routing-trace");
  EXPECT_NE(r.err.find("is a directory"), std::string::npos) << r.err;
}

TEST_F(LogitsErrors, OutputsToAFifoASymlinkAndADevice) {
  TempDir t;
  ASSERT_EQ(::mkfifo((t / "fifo").c_str(), 0600), 0);
  const int fd = ::open((t / "fifo").c_str(), O_RDWR | O_NONBLOCK);  // the reader, held open
  ASSERT_GE(fd, 0);
  ::fcntl(fd, F_SETPIPE_SZ, 1 << 20);
  fs::create_symlink(t / "target.jsonl", t / "link.jsonl");
  const CommandResult r = run_moeflux({"logits", "-m", *tmp_ / "pkg", "--tokens", "1,2", "--out",
                                       t / "fifo", "--routing-trace", t / "link.jsonl"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string piped(1 << 20, '\0');
  const ssize_t n = ::read(fd, piped.data(), piped.size());
  ::close(fd);
  ASSERT_GT(n, 10);
  EXPECT_EQ(piped.substr(1, 5), "NUMPY");
  struct stat st {};
  ASSERT_EQ(::lstat((t / "fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_TRUE(fs::is_symlink(t / "link.jsonl"));
  EXPECT_NE(read_text(t / "target.jsonl").find("moeflux-routing-trace"), std::string::npos);

  const CommandResult d = run_moeflux({"logits", "-m", *tmp_ / "pkg", "--tokens", "1", "--out",
                                       "/dev/null", "--routing-trace", "/dev/null"});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  ASSERT_EQ(::lstat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << "/dev/null was replaced";
}

// Values the model cannot use: usage errors that say why.
TEST_F(LogitsErrors, OptionsBeyondTheModel) {
  TempDir t;
  auto logits = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"logits", "-m",    *tmp_ / "pkg", "--tokens",
                                     "1",      "--out", t / "o.npy"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_moeflux(args);
  };
  expect_usage_error(logits({"--k", "100000"}), "--k 100000 exceeds the model's");
  expect_usage_error(logits({"--hot", "100000", "--ram-cache", "1G"}),
                     "--hot 100000 exceeds the model's");
  expect_usage_error(logits({"--hot", "2"}), "--hot needs a --ram-cache");
  expect_usage_error(logits({"--prefetch-copies", "4"}), "--prefetch-copies needs predictions");
  expect_usage_error(logits({"--ram-cache", "1"}), "--ram-cache: 1 bytes hold no expert record");
  expect_usage_error(logits({"--ram-cache", "lots"}), "--ram-cache");
  EXPECT_FALSE(fs::exists(t / "o.npy"));
}

// The GPU expert options on the CPU backend: an error that says why, not silently ignored.
TEST_F(LogitsErrors, GpuExpertOptionsOnTheCpuBackend) {
  TempDir t;
  auto logits = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"logits", "-m",        *tmp_ / "pkg", "--tokens", "1",
                                     "--out",  t / "o.npy", "--backend",   "cpu"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_moeflux(args);
  };
  expect_clean_failure(logits({"--gpu-mem", "1G"}), "--gpu-mem: the cpu backend");
  expect_clean_failure(logits({"--gpu-reads", "in-place"}), "--gpu-reads in-place: the cpu");
  expect_usage_error(logits({"--gpu-reads", "sideways"}), "--gpu-reads");
  EXPECT_FALSE(fs::exists(t / "o.npy"));
}

TEST_F(LogitsErrors, DirectoryWhereALayerFileShouldBe) {
  TempDir t;
  const std::string pkg = package_copy(t);
  const std::string layer = a_layer_file(pkg);
  ASSERT_FALSE(layer.empty());
  fs::remove(layer);
  fs::create_directories(layer);
  const CommandResult r = run_moeflux({"logits", "-m", pkg, "--tokens", "1", "--out", t / "o.npy"});
  expect_clean_failure(r, layer + ": is a directory");
  EXPECT_EQ(r.err.find("truncated"), std::string::npos) << r.err;
}

TEST_F(LogitsErrors, CacheSimBudgets) {
  TempDir t;
  ASSERT_EQ(run_moeflux({"logits", "-m", *tmp_ / "pkg", "--tokens", "1,2,3", "--out", t / "o.npy",
                         "--routing-trace", t / "trace.jsonl"})
                .exit_code,
            0);
  auto sim = [&](const std::string& budgets) {
    return run_moeflux(
        {"cache-sim", "-m", *tmp_ / "pkg", "--trace", t / "trace.jsonl", "--budgets", budgets});
  };
  for (const char* bad : {"-5%", "150%", "x%", "5%,,10%", "-1M", "12Q"}) {
    SCOPED_TRACE(bad);
    expect_usage_error(sim(bad), "--budgets");
  }
  const CommandResult ok = sim("50%,1T");  // a budget above every expert is simulated as all
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

// Parse errors: one line naming the option, exit 2; --help and --version still exit 0.
TEST(CommandLine, ParseErrorsAreOneLineWithExitCode2) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{}, "no command given"},
      {{"nosuch"}, "unknown command 'nosuch'"},
      {{"run"}, "give the prompt"},
      {{"inspect"}, "PKG is required"},
      {{"run", "-p", "x", "--bogus"}, "--bogus"},
      {{"run", "-p", "x", "extra"}, "extra"},
      {{"run", "-p", "x", "-n", "abc"}, "--n-predict: expects an integer from 0 to"},
      {{"run", "-p", "x", "-n", "-3"}, "--n-predict"},
      {{"run", "-p", "x", "--threads", "-1"}, "--threads: expects an integer from 1 to"},
      {{"run", "-p", "x", "--threads", "0"}, "--threads"},
      {{"convert", "a", "b", "-t", "0"}, "--threads"},
      {{"run", "-p", "x", "--temp", "abc"}, "--temp: expects a number"},
      {{"run", "-p", "x", "--temp", "inf"}, "--temp"},
      {{"run", "-p", "x", "--top-k", "1.5"}, "--top-k: expects an integer"},
      {{"run", "-p", "x", "--seed", "-1"}, "--seed: expects a non-negative integer"},
      {{"run", "-p", "x", "--seed", "0x10"}, "--seed"},
      {{"bench", "--repeat", "0"}, "--repeat"},
      {{"run", "-p", "x", "--io", "floppy"}, "--io"},
      {{"perplexity", "-f", "x", "--ctx", "1"}, "--ctx"},
      {{"tokenize", "-t", "a.json", "-m", "pkg", "x"}, "excludes"},
  };
  for (const auto& [args, mention] : cases) {
    SCOPED_TRACE(testing::PrintToString(args));
    expect_usage_error(run_moeflux(args), mention);
  }
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--help"}, {"run", "--help"}, {"--version"}}) {
    const CommandResult r = run_moeflux(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_FALSE(r.out.empty());
  }
}

// Values checked before the model is opened: usage errors even with no model at hand.
TEST(CommandLine, ImpossibleValuesAreUsageErrors) {
  TempDir t;
  const std::string none = t / "none";
  expect_usage_error(run_moeflux({"run", "-m", none, "-p", "x", "--top-k", "-1"}), "--top-k");
  expect_usage_error(run_moeflux({"run", "-m", none, "-p", "x", "--top-p", "0"}), "--top-p");
  expect_usage_error(run_moeflux({"run", "-m", none, "-p", "x", "--min-p", "2"}), "--min-p");
  expect_usage_error(run_moeflux({"run", "-m", none, "-p", ""}), "-p: the prompt is empty");
  expect_usage_error(run_moeflux({"run", "-m", none, "-p", "x", "--system", "s"}),
                     "--system needs --chat");
  expect_usage_error(run_moeflux({"tokenize", "x"}), "give exactly one of");
}

}  // namespace
}  // namespace moeflux::test
