#include "runtime/generate.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.hpp"
#include "core/finite.hpp"
#include "core/proc_io.hpp"
#include "runtime/stop_strings.hpp"

namespace moeflux {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// eos_token_id: an int, a list of ints, or absent / null.
void collect_ids(const nlohmann::json& j, const char* key, std::vector<int>& out) {
  if (!j.is_object() || !j.contains(key)) return;
  const auto& v = j.at(key);
  if (v.is_number_integer()) out.push_back(v.get<int>());
  if (v.is_array())
    for (const auto& e : v)
      if (e.is_number_integer()) out.push_back(e.get<int>());
}

}  // namespace

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Length:
      return "length";
    case StopReason::EndToken:
      return "eos";
    case StopReason::StopString:
      return "stop string";
    case StopReason::ContextFull:
      return "context full";
    case StopReason::Interrupted:
      return "interrupted";
  }
  return "?";
}

std::vector<int> end_token_ids(const Package& pkg, const Tokenizer& tok) {
  std::vector<int> ids;
  const nlohmann::json& cfg = pkg.manifest().source_config;
  collect_ids(cfg, "eos_token_id", ids);
  if (cfg.is_object() && cfg.contains("text_config"))
    collect_ids(cfg.at("text_config"), "eos_token_id", ids);
  for (const auto& f : pkg.manifest().tokenizer_files) {
    if (std::filesystem::path(f).filename() != "generation_config.json") continue;
    const std::string path = (std::filesystem::path(pkg.dir()) / f).string();
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path + ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(ss.str());
    } catch (const nlohmann::json::exception& e) {
      fail(path + ": invalid JSON (" + e.what() + ")");
    }
    collect_ids(j, "eos_token_id", ids);
  }
  for (const char* name : {"<|im_end|>", "<|endoftext|>"})
    if (auto id = tok.token_id(name)) ids.push_back(*id);
  const int vocab = pkg.config().vocab_size;
  std::erase_if(ids, [&](int id) { return id < 0 || id >= vocab; });
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

Generator::Generator(Session& session, const Tokenizer& tok, const SamplerOptions& sampling,
                     GenerateOptions opts)
    : session_(session), tok_(tok), sampler_(sampling), opts_(std::move(opts)) {
  std::erase_if(opts_.stop, [](const std::string& s) { return s.empty(); });
}

int Generator::position() const {
  return session_.position() + (pending_ ? 1 : 0);
}

void Generator::clear() {
  session_.clear();
  sequence_.clear();
  pending_.reset();
}

void Generator::evaluate_pending() {
  if (!pending_) return;
  const int t = *pending_;
  pending_.reset();
  checked(session_.eval_token(t));
}

void Generator::adopt_session() {
  pending_.reset();
  sequence_ = session_.tokens();
}

void Generator::rewind(size_t n) {
  MF_ASSERT(n <= sequence_.size());
  session_.clear();
  pending_.reset();
  sequence_.resize(n);
  if (n > 0) checked(session_.eval_prompt(sequence_));
}

const std::vector<float>& Generator::checked(const std::vector<float>& logits) const {
  require_finite_logits(logits, logits.size(), size_t(session_.position()) - 1,
                        session_.model().package().dir());
  return logits;
}

void Generator::check(std::span<const int> prompt) const {
  const ModelConfig& c = session_.model().config();
  const size_t n = prompt.size() + (pending_ ? 1 : 0), max_pos = size_t(c.max_position_embeddings);
  if (n == 0) fail("nothing to evaluate: the prompt is empty");
  for (int t : prompt)
    if (t < 0 || t >= c.vocab_size)
      fail("token id " + std::to_string(t) + " is out of range (vocabulary size " +
           std::to_string(c.vocab_size) + ")");
  if (size_t(session_.position()) + n > max_pos) {
    if (session_.position() == 0)
      fail("the prompt has " + std::to_string(n) + " tokens, more than the model's context of " +
           std::to_string(max_pos) + " positions");
    fail("the conversation (" + std::to_string(session_.position()) + " tokens) and the new " +
         std::to_string(n) + " tokens exceed the model's context of " + std::to_string(max_pos) +
         " positions");
  }
}

GenerateResult Generator::run(std::span<const int> prompt, const TextSink& sink) {
  check(prompt);
  const size_t max_pos = size_t(session_.model().config().max_position_embeddings);
  GenerateResult r;
  if (pending_) r.prompt.push_back(*pending_);
  r.prompt.insert(r.prompt.end(), prompt.begin(), prompt.end());
  const ExpertReader& reader = session_.streamer().reader();

  // Prompt: one chunked evaluation.
  const ReaderStats s0 = reader.stats();
  auto t0 = Clock::now();
  const std::vector<float>* logits = &checked(session_.eval_prompt(r.prompt));
  // Greedy, or top-k sampling, without penalties: after the prompt, each token's pick — the
  // greedy one, or the k best the sampler draws from — is the engine's, computed where the logits
  // are (with their finiteness), so the host need not scan the vocabulary. Same tokens, same
  // draws as the sampler over the whole logits.
  const size_t vocab = size_t(session_.model().config().vocab_size);
  const bool greedy_pick = sampler_.plain_greedy();
  const size_t pick_k = greedy_pick ? 0 : sampler_.top_k_candidates(vocab);
  const bool engine_picks = greedy_pick || pick_k > 0;
  LogitsPick pick;
  pick.top_k = pick_k;
  bool picked = false;  // `pick` holds the engine's pick of the current logits
  r.prompt_seconds = since(t0);
  const ReaderStats s1 = reader.stats();
  const std::optional<uint64_t> device1 = process_storage_read_bytes();
  r.prompt_expert_bytes = s1.bytes - s0.bytes;
  pending_.reset();
  sequence_.insert(sequence_.end(), prompt.begin(), prompt.end());

  // Think state from the sequence so far: inside iff the last <think> follows the last </think>.
  bool inside_think = false;
  int think_tokens = 0;
  if (opts_.think_open_id && opts_.think_close_id)
    for (int t : sequence_) {
      if (t == *opts_.think_open_id)
        inside_think = true, think_tokens = 0;
      else if (t == *opts_.think_close_id)
        inside_think = false;
      else if (inside_think)
        ++think_tokens;
    }

  StreamingDetokenizer detok(tok_);
  StopStringFilter stops(opts_.stop);
  std::string out;  // scratch: text released by the stop-string filter
  // Emits what cannot be part of a stop string; true when a stop string was found.
  auto push_text = [&](const std::string& piece, bool final) {
    out.clear();
    const bool stopped = stops.push(piece, final, out);
    if (!out.empty()) {
      r.text.append(out);
      if (sink) sink(out);
    }
    return stopped;
  };

  t0 = Clock::now();
  r.reason = StopReason::Length;
  bool stopped_by_string = false;
  while (r.generated.size() < size_t(std::max(0, opts_.max_tokens))) {
    if (opts_.stop_requested && opts_.stop_requested()) {
      r.reason = StopReason::Interrupted;
      break;
    }
    int t;
    if (inside_think && opts_.think_close_id && opts_.think_budget >= 0 &&
        think_tokens >= opts_.think_budget) {
      t = *opts_.think_close_id;  // budget spent: close the thought
      ++r.forced_think_close;
    } else if (picked) {
      t = pick.top_k > 0 ? sampler_.sample_top_k(pick.best) : pick.id;
    } else {
      t = sampler_.sample(*logits, sequence_);
    }
    if (std::find(opts_.end_tokens.begin(), opts_.end_tokens.end(), t) != opts_.end_tokens.end()) {
      r.reason = StopReason::EndToken;
      break;
    }
    sequence_.push_back(t);
    r.generated.push_back(t);
    pending_ = t;
    if (opts_.think_open_id && t == *opts_.think_open_id) {
      inside_think = true;
      think_tokens = 0;
    } else if (opts_.think_close_id && t == *opts_.think_close_id) {
      inside_think = false;
    } else if (inside_think) {
      ++think_tokens;
    }
    if (push_text(detok.push(t), false)) {
      r.reason = StopReason::StopString;
      stopped_by_string = true;
      break;
    }
    if (r.generated.size() >= size_t(opts_.max_tokens)) break;  // Length; t stays pending
    if (size_t(session_.position()) >= max_pos) {
      r.reason = StopReason::ContextFull;
      break;
    }
    if (engine_picks) {
      logits = &session_.eval_token(t, &pick);
      if (!pick.finite) checked(*logits);  // throws, naming the position
      picked = true;
    } else {
      logits = &checked(session_.eval_token(t));
    }
    pending_.reset();
    ++r.decode_evals;
  }
  if (!stopped_by_string && push_text(detok.flush(), true)) r.reason = StopReason::StopString;
  r.generate_seconds = since(t0);
  const ReaderStats s2 = reader.stats();
  r.generate_expert_bytes = s2.bytes - s1.bytes;
  r.generate_read_seconds = s2.busy_seconds - s1.busy_seconds;
  if (const std::optional<uint64_t> device2 = process_storage_read_bytes(); device1 && device2)
    r.generate_storage_bytes = *device2 - *device1;
  return r;
}

}  // namespace moeflux
