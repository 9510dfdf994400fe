// Text in, text out: the generation loop (runtime/generate.hpp) and the run / chat / perplexity
// commands.
//
// Most tests use a fixture package made on the fly: the qwen3_5_moe_vl checkpoint (vocabulary
// 256; context cut to 64 positions so the context limits are reachable) with the byte tokenizer
// of tests/fixtures/bytes_tokenizer (token id b = byte b, so text and ids correspond one to one),
// converted with `moeflux convert`. Its config's eos_token_id is 2.
// The last tests use the bundled model (models/moeflux-tiny-kjv) and compare with the greedy
// samples and held-out perplexity transformers recorded there; they are skipped without it.
#include "runtime/generate.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "formats/npy.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

constexpr int kContext = 64;
constexpr int kEos = 2;  // text_config.eos_token_id of the fixture

struct PackageSpec {
  bool tokenizer = true;
  std::string generation_config;  // JSON text of generation_config.json, "" = none
};

// Sets row `row` of the bf16 matrix `name` in a safetensors file to NaN (bf16 0x7fc0).
void poison_row(const std::string& file, const std::string& name, int row) {
  std::string bytes = read_text(file);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  const auto& t = header.at(name);
  ASSERT_EQ(t.at("dtype"), "BF16");
  const size_t cols = t.at("shape")[1].get<size_t>();
  const size_t at = 8 + n + t.at("data_offsets")[0].get<size_t>() + size_t(row) * cols * 2;
  for (size_t c = 0; c < cols; ++c) bytes.replace(at + 2 * c, 2, "\xc0\x7f");
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
}

// The fixture checkpoint with the byte tokenizer, copied to `tmp/name-hf`, with a context of
// `context` positions.
std::string make_checkpoint(const TempDir& tmp, const PackageSpec& spec, const std::string& name,
                            int context = kContext) {
  const std::string hf = tmp / (name + "-hf");
  fs::copy(fixture_dir("qwen3_5_moe_vl/hf"), hf, fs::copy_options::recursive);
  auto cfg = nlohmann::json::parse(read_text(hf + "/config.json"));
  cfg["text_config"]["max_position_embeddings"] = context;
  std::ofstream(hf + "/config.json") << cfg.dump(2);
  if (spec.tokenizer)
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(fixture_dir("bytes_tokenizer/") + f, hf + "/" + f);
  if (!spec.generation_config.empty())
    std::ofstream(hf + "/generation_config.json") << spec.generation_config;
  return hf;
}

// Converts checkpoint `hf` into `tmp/name`.
std::string convert(const TempDir& tmp, const std::string& hf, const std::string& name) {
  const CommandResult c = run_moeflux({"convert", hf, tmp / name, "-q"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  return tmp / name;
}

// The fixture checkpoint with the byte tokenizer, converted into `tmp/name`.
std::string make_package(const TempDir& tmp, const PackageSpec& spec = {},
                         const std::string& name = "pkg") {
  return convert(tmp, make_checkpoint(tmp, spec, name), name);
}

std::vector<int> bytes_of(const std::string& s) {
  std::vector<int> v;
  for (unsigned char c : s) v.push_back(c);
  return v;
}

nlohmann::json run_json(const std::string& pkg, const TempDir& tmp, std::vector<std::string> args) {
  std::vector<std::string> all = {"run", "-m", pkg, "--no-echo", "--json", tmp / "run.json"};
  all.insert(all.end(), args.begin(), args.end());
  const CommandResult r = run_moeflux(all);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(read_text(tmp / "run.json"));
  EXPECT_EQ(j.at("text").get<std::string>(), r.out);
  return j;
}

// Logits [n, vocab] of `tokens` evaluated in order, by `moeflux logits`.
NpyArray logits_of(const std::string& pkg, const TempDir& tmp, const std::vector<int>& tokens) {
  const CommandResult l =
      run_moeflux({"logits", "-m", pkg, "--tokens", join_ints(tokens), "--out", tmp / "l.npy"});
  EXPECT_EQ(l.exit_code, 0) << l.err;
  return read_npy(tmp / "l.npy");
}

size_t argmax_row(const NpyArray& a, size_t row) {
  const size_t V = a.shape[1];
  const double* r = &a.values[row * V];
  return size_t(std::max_element(r, r + V) - r);
}

// --- run ---------------------------------------------------------------------------------------

TEST(RunCommand, SameSeedSameTextAndOneSummaryLine) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const std::vector<std::string> args = {"run", "-m", pkg,      "-p", "In the beginning",
                                         "-n",  "5",  "--seed", "1"};
  const CommandResult a = run_moeflux(args), b = run_moeflux(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(std::count(a.err.begin(), a.err.end(), '\n'), 1) << a.err;
  for (const char* part :
       {"[run] prompt 16 tok", "generated 5 tok", "tok/s), stopped: length |",
        "per token: resident", "MiB read from files at", "GB/s through the page cache", "seed 1"})
    EXPECT_NE(a.err.find(part), std::string::npos) << part << " missing in " << a.err;
  // Another seed draws another sequence (of 5 tokens from 256: equal by chance ~never).
  const auto j1 = run_json(pkg, tmp, {"-p", "In the beginning", "-n", "5", "--seed", "1"});
  const auto j2 = run_json(pkg, tmp, {"-p", "In the beginning", "-n", "5", "--seed", "2"});
  EXPECT_NE(j1.at("tokens"), j2.at("tokens"));
  EXPECT_EQ(j1.at("seed").get<uint64_t>(), 1u);
}

// Where the expert bytes came from: the device (O_DIRECT), or the page cache, split into storage
// reads and hits where the kernel counts them (/proc/self/io).
TEST(RunCommand, SummarySaysWhereExpertBytesCameFrom) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  CommandResult r = run_moeflux({"run", "-m", pkg, "-p", "In", "-n", "4", "--io", "direct"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("MiB read from files at"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("from storage (O_DIRECT)"), std::string::npos) << r.err;
  r = run_moeflux({"run", "-m", pkg, "-p", "In", "-n", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  if (fs::exists("/proc/self/io")) {
    EXPECT_NE(r.err.find("MiB from storage,"), std::string::npos) << r.err;
  }
  EXPECT_NE(r.err.find("page-cache hits"), std::string::npos) << r.err;
}

// With stdout and stderr in one file (2>&1) the summary starts a line of its own; with stdout
// alone in a file, stdout holds exactly the text.
TEST(RunCommand, SummaryStartsItsOwnLine) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const std::string cmd = shell_quote(MOEFLUX_BINARY) + " run -m " + shell_quote(pkg) +
                          " -p In -n 4 --temp 0 --no-echo";
  ASSERT_EQ(std::system((cmd + " >" + shell_quote(tmp / "both") + " 2>&1").c_str()), 0);
  ASSERT_EQ(std::system((cmd + " >" + shell_quote(tmp / "out") + " 2>/dev/null").c_str()), 0);
  const std::string both = read_text(tmp / "both"), out = read_text(tmp / "out");
  ASSERT_FALSE(out.empty() || out.back() == '\n')
      << "pick a prompt whose greedy text ends mid-line";
  EXPECT_EQ(both.substr(0, out.size() + 7), out + "\n[run] ");
  EXPECT_EQ(both.back(), '\n');
  const auto j = run_json(pkg, tmp, {"-p", "In", "-n", "4", "--temp", "0"});
  EXPECT_EQ(out, j.at("text").get<std::string>());
}

TEST(RunCommand, GreedyIsArgmaxOfLogits) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const std::string prompt = "And God said";
  const auto j = run_json(pkg, tmp, {"-p", prompt, "-n", "12", "--temp", "0"});
  const auto prompt_ids = j.at("prompt_tokens").get<std::vector<int>>();
  const auto gen = j.at("tokens").get<std::vector<int>>();
  EXPECT_EQ(prompt_ids, bytes_of(prompt));
  std::vector<int> seq = prompt_ids;
  seq.insert(seq.end(), gen.begin(), gen.end());
  const NpyArray l = logits_of(pkg, tmp, seq);
  for (size_t i = 0; i < gen.size(); ++i)
    EXPECT_EQ(argmax_row(l, prompt_ids.size() - 1 + i), size_t(gen[i])) << "token " << i;
  if (j.at("stop_reason") == "eos")
    EXPECT_EQ(argmax_row(l, seq.size() - 1), size_t(kEos));
  else
    EXPECT_EQ(gen.size(), 12u);
}

TEST(RunCommand, SamplingDefaultsComeFromGenerationConfig) {
  TempDir tmp;
  // do_sample false: greedy unless the command line says otherwise.
  const std::string pkg =
      make_package(tmp, {.tokenizer = true, .generation_config = R"({"do_sample": false})"});
  const auto implicit = run_json(pkg, tmp, {"-p", "Seed", "-n", "8", "--seed", "1"});
  const auto greedy = run_json(pkg, tmp, {"-p", "Seed", "-n", "8", "--temp", "0"});
  const auto sampled = run_json(pkg, tmp, {"-p", "Seed", "-n", "8", "--temp", "1", "--seed", "1"});
  EXPECT_EQ(implicit.at("tokens"), greedy.at("tokens"));
  EXPECT_NE(sampled.at("tokens"), greedy.at("tokens"));
}

// Flags given on the command line win over generation_config.json, each one on its own.
TEST(RunCommand, ExplicitFlagsWinOverGenerationConfig) {
  TempDir tmp;
  const std::string pkg = make_package(
      tmp,
      {.tokenizer = true, .generation_config = R"({"temperature": 1.5, "top_k": 200, "top_p": 1.0,
                                     "min_p": 0.0})"});
  const std::vector<std::string> p = {"-p", "Seed", "-n", "16", "--seed", "3"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), p.begin(), p.end());
    return run_json(pkg, tmp, extra).at("tokens");
  };
  const auto greedy = with({"--temp", "0"});
  EXPECT_NE(with({}), greedy);  // the config's sampling is not greedy for this seed
  EXPECT_EQ(with({"--top-k", "1"}), greedy);
  EXPECT_EQ(with({"--top-p", "0.000001"}), greedy);
  EXPECT_EQ(with({"--min-p", "1"}), greedy);
}

TEST(RunCommand, StopStringEndsTheTextAndIsNotPrinted) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const auto full = run_json(pkg, tmp, {"-p", "Light", "-n", "24", "--temp", "0"});
  const std::string text = full.at("text").get<std::string>();
  ASSERT_GE(text.size(), 8u) << "the fixture's greedy text is too short for this test";
  const std::string stop = text.substr(text.size() / 2, 3);
  const size_t at = text.find(stop);
  const CommandResult r =
      run_moeflux({"run", "-m", pkg, "-p", "Light", "-n", "24", "--temp", "0", "--stop",
                   "never-in-this-text", "--stop", stop, "--json", tmp / "stop.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "Light" + text.substr(0, at));
  const auto j = nlohmann::json::parse(read_text(tmp / "stop.json"));
  EXPECT_EQ(j.at("stop_reason"), "stop string");
  EXPECT_NE(r.err.find("stop string"), std::string::npos) << r.err;
}

TEST(RunCommand, StopsWhenTheContextIsFull) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const std::string prompt(60, 'a');
  const auto j = run_json(pkg, tmp, {"-p", prompt, "-n", "10", "--temp", "0"});
  if (j.at("stop_reason") == "eos") GTEST_SKIP() << "greedy text ended before the context did";
  EXPECT_EQ(j.at("stop_reason"), "context full");
  // 60 evaluated + 4 generated-and-evaluated fill 64 positions; the 5th is sampled from the last.
  EXPECT_EQ(j.at("tokens").size(), 5u);
}

TEST(RunCommand, InvalidUtf8InThePromptIsReplaced) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const auto j = run_json(pkg, tmp,
                          {"-p",
                           "\xff\xfe"
                           "abc",
                           "-n", "1"});
  // Each maximal invalid subsequence becomes U+FFFD (EF BF BD), as Tokenizer::encode documents.
  EXPECT_EQ(j.at("prompt_tokens").get<std::vector<int>>(),
            (std::vector<int>{0xEF, 0xBF, 0xBD, 0xEF, 0xBF, 0xBD, 'a', 'b', 'c'}));
}

TEST(RunCommand, ChatWrapsThePromptWithTheTemplate) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const auto j = run_json(pkg, tmp, {"-p", "Hi", "--chat", "-n", "1"});
  EXPECT_EQ(j.at("prompt_tokens").get<std::vector<int>>(),
            bytes_of("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
}

// The package's own template, whatever its family: here GLM-4.5's (chat_template.jinja wins over
// tokenizer_config.json), with --system and --no-think; a template that refuses the conversation
// or does not parse is an error naming the package and the template position.
TEST(RunCommand, ChatRendersThePackagesOwnTemplate) {
  TempDir tmp;
  const std::string hf = make_checkpoint(tmp, {}, "glm", /*context=*/256);
  fs::copy_file(fixture_dir("chat/glm4_5.jinja"), hf + "/chat_template.jinja");
  const std::string pkg = convert(tmp, hf, "glm");
  const auto j =
      run_json(pkg, tmp, {"-p", "Hi", "--chat", "--system", "S", "--no-think", "-n", "1"});
  EXPECT_EQ(
      j.at("prompt_tokens").get<std::vector<int>>(),
      bytes_of("[gMASK]<sop><|system|>\nS<|user|>\nHi/nothink<|assistant|>\n<think></think>"));

  std::ofstream(pkg + "/tokenizer/chat_template.jinja", std::ios::trunc)
      << "{{ raise_exception('This model needs a system prompt.') if messages|length < 2 }}";
  CommandResult r = run_moeflux({"run", "-m", pkg, "-p", "Hi", "--chat", "-n", "1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("chat template:1:4: This model needs a system prompt."), std::string::npos)
      << r.err;
  std::ofstream(pkg + "/tokenizer/chat_template.jinja", std::ios::trunc)
      << "{% for m in messages %}";
  r = run_moeflux({"run", "-m", pkg, "-p", "Hi", "--chat", "-n", "1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(pkg + ": the package's chat template: chat template:1:1: 'for' block not "
                             "closed"),
            std::string::npos)
      << r.err;
}

TEST(RunCommand, EchoesThePromptAndReadsItFromAFileOrStandardInput) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  auto run = [&](std::vector<std::string> args, const std::string& input = "") {
    args.insert(args.begin(), {"run", "-m", pkg, "-n", "6", "--temp", "0"});
    return run_moeflux_with(args, "", input);
  };
  const CommandResult quiet = run({"-p", "Let there", "--no-echo"});
  ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
  EXPECT_EQ(run({"-p", "Let there"}).out, "Let there" + quiet.out);
  std::ofstream(tmp / "p.txt") << "Let there";
  EXPECT_EQ(run({"-f", tmp / "p.txt"}).out, "Let there" + quiet.out);
  EXPECT_EQ(run({"-p", "-"}, "Let there").out, "Let there" + quiet.out);
  // --chat: the prompt on a line of its own, then the reply.
  const CommandResult reply = run({"-p", "Hi", "--chat", "--no-echo"});
  EXPECT_EQ(run({"-p", "Hi", "--chat"}).out, "Hi\n" + reply.out);

  expect_usage_error(run({"-p", "x", "-f", tmp / "p.txt"}), "excludes");
  expect_usage_error(run({}), "give the prompt");
  expect_clean_failure(run({"-f", tmp / "none.txt"}), "-f: cannot read " + tmp / "none.txt");
  std::ofstream(tmp / "empty.txt").close();
  expect_usage_error(run({"-f", tmp / "empty.txt"}), "the prompt is empty");
  expect_usage_error(run({"-p", "-"}, ""), "the prompt is empty");
}

TEST(RunCommand, ModelFromTheEnvironment) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const CommandResult r = run_moeflux_with({"run", "-p", "x", "-n", "2", "--seed", "3"},
                                           "MOEFLUX_MODEL=" + shell_quote(pkg), "");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const CommandResult m =
      run_moeflux_with({"run", "-p", "x"}, "MOEFLUX_MODEL=" + shell_quote(tmp / "none"), "");
  expect_clean_failure(m, tmp / "none");
}

TEST(RunCommand, BadInput) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  expect_usage_error(run_moeflux({"run", "-m", pkg, "-p", ""}), "-p: the prompt is empty");
  expect_clean_failure(run_moeflux({"run", "-m", tmp / "missing", "-p", "x"}), tmp / "missing");
  expect_usage_error(run_moeflux({"run", "-m", pkg, "-p", std::string(kContext + 1, 'a')}),
                     "more than the model's context of 64");
  expect_usage_error(run_moeflux({"run", "-m", pkg, "-p", "x", "--no-think"}), "needs --chat");
  expect_usage_error(run_moeflux({"run", "-m", pkg, "-p", "x", "--think-budget", "4"}),
                     "no <think> / </think> tokens");
  expect_usage_error(run_moeflux({"run", "-m", pkg, "-p", "x", "--top-p", "1.5"}), "--top-p");
  expect_usage_error(run_moeflux({"run", "-m", pkg, "-p", "x", "--temp", "-1"}), "--temp");
  const std::string bare = make_package(tmp, {.tokenizer = false, .generation_config = ""}, "bare");
  expect_clean_failure(run_moeflux({"run", "-m", bare, "-p", "x"}), "has no tokenizer");
  expect_clean_failure(run_moeflux({"perplexity", "-m", bare, "-f", fixture_dir("chat/README.md")}),
                       "has no tokenizer");
}

// --- perplexity --------------------------------------------------------------------------------

// exp(mean NLL) over windows, from `moeflux logits` of each window.
double reference_ppl(const std::string& pkg, const TempDir& tmp, const std::vector<int>& ids,
                     size_t ctx, size_t* scored) {
  double nll = 0;
  *scored = 0;
  for (size_t b = 0; b + 1 < ids.size(); b += ctx) {  // windows of at least 2 tokens
    const std::vector<int> w(ids.begin() + long(b),
                             ids.begin() + long(std::min(b + ctx, ids.size())));
    const NpyArray l = logits_of(pkg, tmp, w);
    const size_t V = l.shape[1];
    for (size_t i = 0; i + 1 < w.size(); ++i) {
      const double* r = &l.values[i * V];
      const double mx = *std::max_element(r, r + V);
      double s = 0;
      for (size_t v = 0; v < V; ++v) s += std::exp(r[v] - mx);
      nll += mx + std::log(s) - r[size_t(w[i + 1])];
      ++*scored;
    }
  }
  return std::exp(nll / double(*scored));
}

TEST(PerplexityCommand, EqualsExpMeanNllFromLogits) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const std::string text = "In the beginning God created the heaven and the earth.";  // 54 bytes
  std::ofstream(tmp / "t.txt") << text;
  const CommandResult r = run_moeflux(
      {"perplexity", "-m", pkg, "-f", tmp / "t.txt", "--ctx", "16", "--json", tmp / "p.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  size_t scored = 0;
  const double ref = reference_ppl(pkg, tmp, bytes_of(text), 16, &scored);
  EXPECT_EQ(scored, 50u);  // 3 windows of 16 (15 predictions each), then 6 bytes (5)
  const auto j = nlohmann::json::parse(read_text(tmp / "p.json"));
  EXPECT_NEAR(j.at("ppl").get<double>(), ref, 1e-6 * ref);
  EXPECT_NEAR(j.at("nll").get<double>(), std::log(ref), 1e-6);
  EXPECT_EQ(j.at("n_tokens"), 50);
  EXPECT_EQ(j.at("n_windows"), 4);
  EXPECT_EQ(j.at("ctx"), 16);
  EXPECT_EQ(j.at("left_out"), 0);
  char line[128];
  std::snprintf(line, sizeof line, "ppl = %.6f (50 tokens, 4 windows)\n",
                j.at("ppl").get<double>());
  EXPECT_EQ(r.out, line);
  EXPECT_NE(r.err.find("window 4/4"), std::string::npos) << r.err;

  // 49 bytes: 3 windows of 16, and one byte that no window can predict, said so.
  std::ofstream(tmp / "t49.txt") << text.substr(0, 49);
  const CommandResult r49 = run_moeflux(
      {"perplexity", "-m", pkg, "-f", tmp / "t49.txt", "--ctx", "16", "--json", tmp / "p.json"});
  ASSERT_EQ(r49.exit_code, 0) << r49.err;
  const double ref49 = reference_ppl(pkg, tmp, bytes_of(text.substr(0, 49)), 16, &scored);
  EXPECT_EQ(scored, 45u);
  const auto j49 = nlohmann::json::parse(read_text(tmp / "p.json"));
  EXPECT_NEAR(j49.at("ppl").get<double>(), ref49, 1e-6 * ref49);
  EXPECT_EQ(j49.at("n_tokens"), 45);
  EXPECT_EQ(j49.at("left_out"), 1);
  EXPECT_NE(r49.out.find("(45 tokens, 3 windows; the last token left out"), std::string::npos)
      << r49.out;

  // A file shorter than --ctx is one window.
  std::ofstream(tmp / "short.txt") << "Let there be";
  const CommandResult s =
      run_moeflux({"perplexity", "-m", pkg, "-f", tmp / "short.txt", "--json", tmp / "s.json"});
  ASSERT_EQ(s.exit_code, 0) << s.err;
  const double ref_short = reference_ppl(pkg, tmp, bytes_of("Let there be"), 12, &scored);
  const auto js = nlohmann::json::parse(read_text(tmp / "s.json"));
  EXPECT_NEAR(js.at("ppl").get<double>(), ref_short, 1e-6 * ref_short);
  EXPECT_EQ(js.at("n_tokens"), 11);
}

TEST(PerplexityCommand, BadInput) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  expect_clean_failure(run_moeflux({"perplexity", "-m", pkg, "-f", tmp / "nope.txt"}),
                       "-f: cannot read " + tmp / "nope.txt");
  expect_clean_failure(run_moeflux({"perplexity", "-m", pkg, "-f", tmp.path().string()}),
                       "-f: cannot read");
  std::ofstream(tmp / "one.txt") << "x";
  expect_clean_failure(run_moeflux({"perplexity", "-m", pkg, "-f", tmp / "one.txt"}),
                       "needs at least 2");
  std::ofstream(tmp / "t.txt") << "some text";
  expect_usage_error(run_moeflux({"perplexity", "-m", pkg, "-f", tmp / "t.txt", "--ctx", "65"}),
                     "--ctx 65 exceeds the model's context of 64");
}

// --- non-finite logits ---------------------------------------------------------------------------

// NaN weights: the embedding row of 'Z' (token 90) is NaN, so every position from a 'Z' on has
// NaN logits (attention carries it forward); text without 'Z' is untouched.
constexpr int kPoison = 'Z';

std::string poisoned_package(const TempDir& tmp) {
  const std::string hf = make_checkpoint(tmp, {}, "poisoned", 1024);
  poison_row(hf + "/model.safetensors", "model.language_model.embed_tokens.weight", kPoison);
  return convert(tmp, hf, "poisoned");
}

TEST(NonFiniteLogits, EveryCommandReportsThemAndWritesNothing) {
  TempDir tmp;
  const std::string pkg = poisoned_package(tmp);
  CommandResult r = run_moeflux({"run", "-m", pkg, "-p", "Z", "-n", "4", "--json", tmp / "r.json"});
  expect_clean_failure(r, "non-finite logits (NaN) at position 0");  // not SIGABRT
  EXPECT_FALSE(fs::exists(tmp / "r.json"));
  r = run_moeflux({"logits", "-m", pkg, "--tokens", "65,90,66", "--out", tmp / "l.npy"});
  expect_clean_failure(r, "non-finite logits (NaN) at position 1");
  EXPECT_FALSE(fs::exists(tmp / "l.npy"));
  std::ofstream(tmp / "z.txt") << "In the Zeal";
  r = run_moeflux({"perplexity", "-m", pkg, "-f", tmp / "z.txt", "--json", tmp / "p.json"});
  expect_clean_failure(r, "non-finite logits (NaN) at position 7");
  EXPECT_FALSE(fs::exists(tmp / "p.json"));
  r = run_moeflux({"run", "-m", pkg, "-p", "In the", "-n", "4", "--temp", "0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(NonFiniteLogits, ChatReportsThemAndKeepsTheConversation) {
  TempDir tmp;
  const std::string pkg = poisoned_package(tmp);
  const std::vector<std::string> args = {"chat", "-m", pkg, "--temp", "0", "-n", "4"};
  const CommandResult r = run_moeflux_with(args, "", "Hi\nZ\nHo\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("[chat] error: " + pkg + ": the model produced non-finite logits"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("the conversation before this turn was kept"), std::string::npos) << r.err;
  // The third turn continued the first, as if the failed one had never been typed.
  const CommandResult same = run_moeflux_with(args, "", "Hi\nHo\n");
  ASSERT_EQ(same.exit_code, 0) << same.err;
  EXPECT_EQ(r.out, same.out);
  // ... and ended at the same position.
  auto last_context = [](const std::string& err) {
    const size_t at = err.rfind("context ");
    return at == std::string::npos ? "" : err.substr(at, err.find('\n', at) - at);
  };
  EXPECT_EQ(last_context(r.err), last_context(same.err)) << r.err;
  EXPECT_NE(last_context(r.err), "");
}

// --- Ctrl-C ------------------------------------------------------------------------------------

// A package that never stops on its own within a test's patience: no end token (the configs'
// eos ids lie outside the vocabulary, so they are dropped) and a context of 32768.
std::string endless_package(const TempDir& tmp) {
  const std::string hf = make_checkpoint(tmp, {}, "endless", 32768);
  auto cfg = nlohmann::json::parse(read_text(hf + "/config.json"));
  cfg["eos_token_id"] = 100000;
  cfg["text_config"]["eos_token_id"] = 100000;
  std::ofstream(hf + "/config.json", std::ios::trunc) << cfg.dump(2);
  return convert(tmp, hf, "endless");
}

TEST(RunCommand, CtrlCStopsTheGenerationAndPrintsTheSummary) {
  TempDir tmp;
  const std::string pkg = endless_package(tmp);
  BackgroundMoeflux run(
      {"run", "-m", pkg, "-p", "In the", "-n", "1000000", "--json", tmp / "r.json"});
  ASSERT_TRUE(run.wait_until([](const std::string& out, const std::string&) {
    return out.size() > 40;  // the prompt and some of the completion
  }));
  run.signal(SIGINT);
  const CommandResult r = run.finish();
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_NE(r.err.find("[run] prompt"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tok/s), stopped: interrupted |"), std::string::npos) << r.err;
  const auto j = nlohmann::json::parse(read_text(tmp / "r.json"));
  EXPECT_EQ(j.at("stop_reason"), "interrupted");
  EXPECT_EQ(r.out, "In the" + j.at("text").get<std::string>());
}

TEST(ChatCommand, CtrlCStopsTheReplyAndASecondOneExits) {
  TempDir tmp;
  const std::string pkg = endless_package(tmp);
  BackgroundMoeflux chat({"chat", "-m", pkg, "-n", "1000000"});
  auto replied = [&](size_t n) {  // n replies ended (interrupted)
    return chat.wait_until([n](const std::string&, const std::string& err) {
      size_t count = 0;
      for (size_t p = 0; (p = err.find("interrupted", p)) != std::string::npos; ++p) ++count;
      return count >= n;
    });
  };
  chat.write("Hi\n");
  ASSERT_TRUE(
      chat.wait_until([](const std::string& out, const std::string&) { return out.size() > 20; }));
  chat.signal(SIGINT);
  ASSERT_TRUE(replied(1)) << chat.err();
  // Back at the prompt: the next turn continues the conversation.
  const size_t first = chat.out().size();
  chat.write("Ho\n");
  ASSERT_TRUE(chat.wait_until(
      [first](const std::string& out, const std::string&) { return out.size() > first + 20; }));
  chat.signal(SIGINT);
  ASSERT_TRUE(replied(2)) << chat.err();
  chat.signal(SIGINT);  // at the prompt: exits
  const CommandResult r = chat.finish();
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_EQ(r.err.find("error"), std::string::npos) << r.err;
}

TEST(ChatCommand, EndOfInputAfterAnInterruptedReplyExitsCleanly) {
  TempDir tmp;
  const std::string pkg = endless_package(tmp);
  BackgroundMoeflux chat({"chat", "-m", pkg, "-n", "1000000"});
  chat.write("Hi\n");
  ASSERT_TRUE(
      chat.wait_until([](const std::string& out, const std::string&) { return out.size() > 20; }));
  chat.signal(SIGINT);
  ASSERT_TRUE(chat.wait_until([](const std::string&, const std::string& err) {
    return err.find("interrupted") != std::string::npos;
  }));
  const CommandResult r = chat.finish();  // closes its input: Ctrl-D
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// --- chat --------------------------------------------------------------------------------------

TEST(ChatCommand, ScriptedConversation) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const CommandResult r = run_moeflux_with({"chat", "-m", pkg, "--temp", "0", "-n", "6"}, "",
                                           "Hello\n\n/clear\nHello\n/nonsense\n/quit\nnot read\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Greedy from a cleared state: the two replies are equal, each followed by a newline.
  ASSERT_EQ(r.out.size() % 2, 0u);
  const std::string reply = r.out.substr(0, r.out.size() / 2);
  ASSERT_FALSE(reply.empty());
  EXPECT_EQ(reply.back(), '\n');
  EXPECT_EQ(r.out, reply + reply);
  EXPECT_NE(r.err.find("[chat] cleared"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("unknown command /nonsense"), std::string::npos) << r.err;
  // End of input ends the chat too.
  EXPECT_EQ(run_moeflux_with({"chat", "-m", pkg, "-n", "2"}, "", "Hi\n").exit_code, 0);
  // A turn that does not fit is refused, and the conversation goes on.
  const CommandResult big =
      run_moeflux_with({"chat", "-m", pkg, "-n", "2"}, "", std::string(80, 'a') + "\nHi\n");
  EXPECT_EQ(big.exit_code, 0) << big.err;
  EXPECT_NE(big.err.find("context of 64"), std::string::npos) << big.err;
}

// --- Generator ---------------------------------------------------------------------------------

struct Loaded {
  std::unique_ptr<Model> model;
  Tokenizer tok;
};

Loaded load(const std::string& pkg) {
  return {Model::open(pkg), Tokenizer::from_file(pkg + "/tokenizer/tokenizer.json")};
}

SamplerOptions greedy() {
  SamplerOptions o;
  o.temperature = 0;
  return o;
}

TEST(Generator, EndTokensFromTheConfigs) {
  TempDir tmp;
  const std::string pkg = make_package(
      tmp, {.generation_config = R"({"eos_token_id": [5, 300, 7], "bos_token_id": 1})"});
  const Loaded m = load(pkg);
  EXPECT_EQ(end_token_ids(m.model->package(), m.tok), (std::vector<int>{2, 5, 7}));
}

// Appending turns to a live session equals evaluating the whole sequence from scratch.
TEST(Generator, NextRunContinuesTheSequence) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const Loaded m = load(pkg);
  const std::vector<int> p1 = bytes_of("First turn. "), p2 = bytes_of("Second: ");
  GenerateOptions go;
  go.max_tokens = 4;  // no end tokens: always 4
  Session s1(*m.model, EngineOptions{});
  Generator g(s1, m.tok, greedy(), go);
  const GenerateResult r1 = g.run(p1, nullptr);
  ASSERT_EQ(r1.generated.size(), 4u);
  EXPECT_EQ(g.position(), int(p1.size() + 4));  // the 4th token is pending
  const GenerateResult r2 = g.run(p2, nullptr);
  EXPECT_EQ(r2.prompt.front(), r1.generated.back());  // pending evaluated first
  std::vector<int> all = p1;
  all.insert(all.end(), r1.generated.begin(), r1.generated.end());
  all.insert(all.end(), p2.begin(), p2.end());
  Session s2(*m.model, EngineOptions{});
  Generator h(s2, m.tok, greedy(), go);
  const GenerateResult r = h.run(all, nullptr);
  EXPECT_EQ(r.generated, r2.generated);
  all.insert(all.end(), r2.generated.begin(), r2.generated.end());
  EXPECT_EQ(g.sequence(), all);
  g.clear();
  EXPECT_EQ(g.position(), 0);
  EXPECT_TRUE(g.sequence().empty());
}

TEST(Generator, ThinkBudgetForcesTheClosingToken) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const Loaded m = load(pkg);
  constexpr int kOpen = 1, kClose = 3;
  for (int budget : {0, 2, 5}) {
    GenerateOptions go;
    go.max_tokens = 8;
    go.think_open_id = kOpen;
    go.think_close_id = kClose;
    go.think_budget = budget;
    Session s(*m.model, EngineOptions{});
    Generator g(s, m.tok, greedy(), go);
    std::vector<int> prompt = bytes_of("Think: ");
    prompt.push_back(kOpen);  // the prompt opens the thought
    const GenerateResult r = g.run(prompt, nullptr);
    // Inside the thought until the model closes it: the budget-th token must be the close.
    size_t closed_at = r.generated.size();
    for (size_t i = 0; i < r.generated.size(); ++i)
      if (r.generated[i] == kClose || r.generated[i] == kOpen) {
        closed_at = i;
        break;
      }
    ASSERT_GT(r.generated.size(), size_t(budget)) << "budget " << budget;
    EXPECT_EQ(closed_at, size_t(budget)) << "budget " << budget;
    EXPECT_EQ(r.generated[size_t(budget)], kClose);
    EXPECT_EQ(r.forced_think_close, 1);
  }
  // Off (< 0): nothing forced.
  GenerateOptions go;
  go.max_tokens = 8;
  go.think_open_id = kOpen;
  go.think_close_id = kClose;
  Session s(*m.model, EngineOptions{});
  Generator g(s, m.tok, greedy(), go);
  EXPECT_EQ(g.run(std::vector<int>{'a', kOpen}, nullptr).forced_think_close, 0);
}

TEST(Generator, StreamedPiecesNeverShowTheStopString) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const Loaded m = load(pkg);
  const std::vector<int> prompt = bytes_of("Stream");
  GenerateOptions go;
  go.max_tokens = 30;
  std::string full;
  {
    Session s(*m.model, EngineOptions{});
    full = Generator(s, m.tok, greedy(), go).run(prompt, nullptr).text;
  }
  ASSERT_GE(full.size(), 12u);
  // A stop string spanning several tokens (bytes), and one that only starts to match.
  const std::string stop = full.substr(6, 4);
  go.stop = {stop, full.substr(2, 2) + "\x01\x01 never"};
  Session s(*m.model, EngineOptions{});
  Generator g(s, m.tok, greedy(), go);
  std::vector<std::string> pieces;
  const GenerateResult r = g.run(prompt, [&](std::string_view p) { pieces.emplace_back(p); });
  EXPECT_EQ(r.reason, StopReason::StopString);
  EXPECT_EQ(r.text, full.substr(0, full.find(stop)));
  std::string joined;
  for (const auto& p : pieces) {
    EXPECT_FALSE(p.empty());
    joined += p;
  }
  EXPECT_EQ(joined, r.text);
}

TEST(Generator, RefusesPromptsThatDoNotFitBeforeEvaluating) {
  TempDir tmp;
  const std::string pkg = make_package(tmp);
  const Loaded m = load(pkg);
  Session s(*m.model, EngineOptions{});
  GenerateOptions go;
  go.max_tokens = 1;
  Generator g(s, m.tok, greedy(), go);
  EXPECT_THROW(g.run(std::vector<int>(kContext + 1, 'a'), nullptr), Error);
  EXPECT_THROW(g.run(std::vector<int>{}, nullptr), Error);
  EXPECT_THROW(g.run(std::vector<int>{256}, nullptr), Error);
  EXPECT_EQ(s.position(), 0);
  g.run(std::vector<int>(40, 'a'), nullptr);
  EXPECT_THROW(g.check(std::vector<int>(24, 'a')), Error);  // 40 + 1 pending + 24 > 64
  EXPECT_NO_THROW(g.check(std::vector<int>(23, 'a')));
}

// --- the bundled model -------------------------------------------------------------------------

std::string bundled() {
  return fixture_dir("../../models/moeflux-tiny-kjv");
}

TEST(BundledModel, GreedySamplesMatchTransformers) {
  if (!fs::exists(bundled() + "/manifest.json")) GTEST_SKIP() << "no bundled model";
  TempDir tmp;
  const auto samples = nlohmann::json::parse(read_text(bundled() + "/samples.json"));
  bool first = true;
  for (const auto& s : samples.at("samples")) {
    std::vector<std::string> args = {"run", "-p",     s.at("prompt").get<std::string>(),
                                     "-n",  "60",     "--temp",
                                     "0",   "--json", tmp / "s.json"};
    if (s.at("kind") == "chat") {
      // The sample's prompt is the rendered template of one user turn.
      const std::string p = s.at("prompt").get<std::string>();
      const std::string open = "<|im_start|>user\n";
      args[2] = p.substr(open.size(), p.find("<|im_end|>") - open.size());
      args.push_back("--chat");
    }
    if (!first) args.insert(args.end(), {"-m", bundled()});  // the first uses the default model
    first = false;
    const CommandResult r = run_moeflux_with(args, "MOEFLUX_MODEL=", "");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(read_text(tmp / "s.json"));
    EXPECT_EQ(j.at("prompt_tokens"), s.at("prompt_ids")) << s.at("prompt");
    auto expected = s.at("new_ids").get<std::vector<int>>();
    if (s.at("kind") == "chat") {
      ASSERT_EQ(expected.back(), 8189);  // <|im_end|>: ends the reply, not printed
      expected.pop_back();
      EXPECT_EQ(j.at("stop_reason"), "eos");
    }
    EXPECT_EQ(j.at("tokens").get<std::vector<int>>(), expected) << s.at("prompt");
    std::string text = s.at("text").get<std::string>();
    if (s.at("kind") == "chat") text = text.substr(0, text.find("<|im_end|>"));
    EXPECT_EQ(r.out, args[2] + (s.at("kind") == "chat" ? "\n" : "") + text);  // echo + text
  }
}

TEST(BundledModel, PerplexityMatchesTransformers) {
  if (!fs::exists(bundled() + "/manifest.json")) GTEST_SKIP() << "no bundled model";
  // The first 8 of the 81 held-out windows transformers scored (heldout_eval.json).
  const auto ev = nlohmann::json::parse(read_text(bundled() + "/heldout_eval.json"));
  const auto ids = ev.at("token_ids").get<std::vector<int>>();
  const auto per_window = ev.at("per_window_nll").get<std::vector<double>>();
  ASSERT_EQ(ev.at("context"), 256);
  const size_t n = 8, ctx = 256;
  const Tokenizer tok = Tokenizer::from_file(bundled() + "/tokenizer/tokenizer.json");
  const std::vector<int> part(ids.begin(), ids.begin() + long(n * ctx));
  const std::string text = tok.decode(part);
  ASSERT_EQ(tok.encode(text), part) << "the decoded windows do not re-encode to the same ids";
  TempDir tmp;
  std::ofstream(tmp / "heldout.txt", std::ios::binary) << text;
  const CommandResult r = run_moeflux(
      {"perplexity", "-m", bundled(), "-f", tmp / "heldout.txt", "--json", tmp / "p.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  double mean = 0;
  for (size_t i = 0; i < n; ++i) mean += per_window[i] / double(n);
  const auto j = nlohmann::json::parse(read_text(tmp / "p.json"));
  EXPECT_EQ(j.at("n_windows"), n);
  EXPECT_EQ(j.at("n_tokens"), n * (ctx - 1));
  EXPECT_NEAR(j.at("nll").get<double>(), mean, 1e-5);  // float32 engine vs float32 transformers
}

// Without -m (and $MOEFLUX_MODEL) every evaluating command uses the bundled model, found relative
// to the executable: <exe_dir>/../models/ (build/ in the source tree) or
// <exe_dir>/../share/moeflux/models/ (an installation). No build path is in the binary.
TEST(BundledModel, FoundRelativeToTheExecutable) {
  if (!fs::exists(bundled() + "/manifest.json")) GTEST_SKIP() << "no bundled model";
  TempDir t;
  fs::create_directories(t / "bin");
  fs::copy_file(MOEFLUX_BINARY, t / "bin/moeflux");
  const std::vector<std::string> logits = {"logits", "--tokens", "5,6,7", "--out", t / "a.npy"};
  const std::string no_env = "MOEFLUX_MODEL=";
  expect_clean_failure(run_moeflux_with(logits, no_env, "", t / "bin/moeflux"),
                       (fs::canonical(t.path()) / "models/moeflux-tiny-kjv").string());
  fs::create_directories(t / "share/moeflux/models");
  fs::create_directory_symlink(fs::canonical(bundled()),
                               t / "share/moeflux/models/moeflux-tiny-kjv");
  const CommandResult installed = run_moeflux_with(logits, no_env, "", t / "bin/moeflux");
  ASSERT_EQ(installed.exit_code, 0) << installed.err;
  ASSERT_EQ(
      run_moeflux({"logits", "-m", bundled(), "--tokens", "5,6,7", "--out", t / "b.npy"}).exit_code,
      0);
  EXPECT_EQ(read_text(t / "a.npy"), read_text(t / "b.npy"));
  // The built binary, from build/: every evaluating command.
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"logits", "--tokens", "5", "--out", t / "c.npy"},
           {"run", "-p", "And", "-n", "2"},
           {"perplexity", "-f", bundled() + "/samples.txt", "--ctx", "64"},
           {"bench", "--prompt-len", "2", "--gen-len", "2", "--repeat", "1", "--no-ceilings"}}) {
    const CommandResult r = run_moeflux_with(args, no_env, "");
    EXPECT_EQ(r.exit_code, 0) << args[0] << ": " << r.err;
  }
  const CommandResult chat = run_moeflux_with({"chat", "-n", "2"}, no_env, "Hi\n");
  EXPECT_EQ(chat.exit_code, 0) << chat.err;
  EXPECT_NE(chat.err.find("models/moeflux-tiny-kjv"), std::string::npos) << chat.err;
  const std::string binary = read_text(MOEFLUX_BINARY);
  const std::string source_models = fs::canonical(bundled()).parent_path().string();
  EXPECT_EQ(binary.find(source_models), std::string::npos) << source_models << " in the binary";
}

TEST(BundledModel, ChatAndThinkBudget) {
  if (!fs::exists(bundled() + "/manifest.json")) GTEST_SKIP() << "no bundled model";
  const CommandResult r =
      run_moeflux_with({"chat", "-m", bundled(), "--seed", "7", "-n", "16", "--think-budget", "4",
                        "--system", "Answer from scripture."},
                       "", "Blessed are the meek\nAnd the merciful\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("template format"), std::string::npos) << r.err;  // its own template
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n') >= 2, true) << r.out;
}

}  // namespace
}  // namespace moeflux::test
