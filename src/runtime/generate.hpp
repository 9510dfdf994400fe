// Text generation: prompt ids -> evaluated prompt -> sampled tokens, streamed as text.
//
// One step: sample t from the logits of the last evaluated position (sampler chain,
// sample/sampler.hpp), append t to the sequence, emit its text, then evaluate t for the next
// logits. It stops at
//   - an end token (eos ids; the end token is neither printed nor evaluated),
//   - a stop string in the generated text (the text before it is printed, not the string),
//   - max_tokens generated tokens,
//   - a full context (the model's max_position_embeddings),
//   - GenerateOptions::stop_requested (Ctrl-C), checked before each token.
// A sampled token the loop did not evaluate (the last one) is kept pending and evaluated first
// by the next run(), so a conversation's state always holds every token of its replies.
// Every evaluation's logits are checked: a NaN or an infinity is an error (core/finite.hpp),
// never sampled.
//
// Think budget (flash-moe style): inside a <think> block (opened by the prompt or by the model),
// once `think_budget` tokens were generated without </think>, the next token is forced to be
// </think> instead of sampled.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/session.hpp"
#include "sample/sampler.hpp"
#include "text/tokenizer.hpp"

namespace moeflux {

struct GenerateOptions {
  int max_tokens = 256;               // generated tokens per run() (end token not counted)
  std::vector<int> end_tokens;        // eos ids (end_token_ids())
  std::vector<std::string> stop;      // stop strings, matched on the decoded text
  int think_budget = -1;              // tokens inside <think> before </think> is forced; < 0: off
  std::optional<int> think_open_id;   // the <think> token, if the vocabulary has one
  std::optional<int> think_close_id;  // the </think> token
  // Polled before each token is sampled: true stops the generation (StopReason::Interrupted).
  // Ctrl-C sets what it reads; it must be cheap and async-signal-safe to set.
  std::function<bool()> stop_requested;
};

enum class StopReason { Length, EndToken, StopString, ContextFull, Interrupted };
// "length", "eos", "stop string", "context full", "interrupted"
const char* stop_reason_name(StopReason r);

struct GenerateResult {
  std::vector<int> prompt;     // ids evaluated before generating (pending + new prompt)
  std::vector<int> generated;  // sampled (or forced) ids, end token excluded
  std::string text;            // the streamed text (stop string and what follows excluded)
  StopReason reason = StopReason::Length;
  int forced_think_close = 0;  // times the think budget forced </think>
  int decode_evals = 0;        // generated tokens evaluated (the last one is left pending)

  double prompt_seconds = 0;           // evaluating `prompt`
  double generate_seconds = 0;         // from the first sample to the end
  uint64_t prompt_expert_bytes = 0;    // expert bytes read from storage during the prompt
  uint64_t generate_expert_bytes = 0;  // ... and during generation
  double generate_read_seconds = 0;    // summed read time of those generation reads
  // Bytes the process read from storage devices during generation (core/proc_io.hpp: page-cache
  // misses and O_DIRECT reads, readahead included), where the kernel reports it.
  std::optional<uint64_t> generate_storage_bytes;
};

// The end-of-generation ids of a package: generation_config.json's and config.json's
// eos_token_id (an int or a list; text_config's too), plus <|im_end|> and <|endoftext|> when the
// vocabulary has them. Ids outside the model's vocabulary are dropped. Sorted, unique.
std::vector<int> end_token_ids(const Package& pkg, const Tokenizer& tok);

class Generator {
 public:
  using TextSink = std::function<void(std::string_view)>;

  // Throws moeflux::Error for invalid sampler options.
  Generator(Session& session, const Tokenizer& tok, const SamplerOptions& sampling,
            GenerateOptions opts);

  // Evaluates `prompt` after the sequence so far, then generates, passing each piece of text to
  // `sink` as soon as it is complete (whole UTF-8 characters, never part of a stop string).
  // Throws moeflux::Error, before evaluating anything, when the prompt does not fit in the
  // context, and for ids outside the vocabulary; after evaluating, for non-finite logits (the
  // session then holds them: rewind() or clear()).
  GenerateResult run(std::span<const int> prompt, const TextSink& sink);

  // The checks run() makes before evaluating: throws moeflux::Error if `prompt` has an id
  // outside the vocabulary, is empty (with nothing pending) or does not fit in the context.
  void check(std::span<const int> prompt) const;

  // Forgets the sequence (session cleared, pending token dropped); the random state continues.
  void clear();

  // Keeps only the first n tokens of sequence(): clears the session and evaluates them again
  // (the DeltaNet layers' recurrent state cannot be unwound in place). How a conversation
  // survives a failed turn. Throws moeflux::Error like run(); then clear() before further use.
  void rewind(size_t n);

  // Evaluates the pending token, if any, so that the session holds the whole sequence (before
  // Session::state_save). Throws like run().
  void evaluate_pending();
  // Takes the session's ids as the sequence (after Session::state_load): nothing pending.
  void adopt_session();

  // Every id of the sequence so far (evaluated or pending), as the repetition penalty sees it.
  const std::vector<int>& sequence() const { return sequence_; }
  // Tokens the session holds plus the pending one: the next prompt starts at this position.
  int position() const;
  GenerateOptions& options() { return opts_; }

 private:
  Session& session_;
  const Tokenizer& tok_;
  Sampler sampler_;
  GenerateOptions opts_;
  std::vector<int> sequence_;
  std::optional<int> pending_;  // sampled, not yet evaluated

  // `logits` if all are finite; throws moeflux::Error naming the package and position otherwise
  // (NaN must not reach the sampler).
  const std::vector<float>& checked(const std::vector<float>& logits) const;
};

}  // namespace moeflux
