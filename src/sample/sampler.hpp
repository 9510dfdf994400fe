// The sampler chain: logits [vocab] -> one token id.
//
// Order (Hugging Face transformers' logits processors, then warpers):
//   1. repetition penalty over the seen tokens (each distinct id once):
//        l' = l / p  if l > 0,   l' = l * p  otherwise            (p = repetition_penalty)
//   2. presence penalty over the seen tokens (each distinct id once):
//        l' = l - presence_penalty
//   3. temperature == 0: greedy, argmax of l' (lowest id on ties); the filters below are skipped.
//   4. temperature:  z = l' / T
//   5. top-k:   keep the k largest z (ties broken by the lower id), k = 0: off
//   6. top-p:   in descending order keep tokens while the probability mass before them is < top_p
//               (the smallest prefix whose mass reaches top_p; at least one token), top_p >= 1: off
//   7. min-p:   keep tokens with p_i >= min_p * max_j p_j, min_p = 0: off
//   8. draw:    p renormalised over the kept set, u ~ U[0,1) from std::mt19937_64(seed),
//               the first token (descending order) whose cumulative mass exceeds u.
// Probabilities are softmax(z) computed in double. The "seen tokens" are the sequence so far
// (prompt and generated tokens, as transformers' input_ids), optionally only the last
// `penalty_last_n`.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "core/top_k.hpp"

namespace moeflux {

// Defaults follow common practice for chat models (llama.cpp's defaults; Qwen3's model cards
// recommend T 0.6-0.7, top-p 0.8-0.95, top-k 20): moderate temperature, a top-k of 40 bounding
// the work per token, nucleus 0.95 and min-p 0.05 to cut the long tail, no penalties.
struct SamplerOptions {
  float temperature = 0.7f;         // 0 = greedy (argmax)
  int top_k = 40;                   // 0 = off (whole vocabulary)
  float top_p = 0.95f;              // 1 = off
  float min_p = 0.05f;              // 0 = off; relative to the most likely token
  float repetition_penalty = 1.0f;  // 1 = off; > 1 discourages repeats (HF semantics)
  float presence_penalty = 0.0f;    // 0 = off; subtracted once from each seen token's logit
  int penalty_last_n = 0;           // seen tokens = the last n of the sequence; 0 = all of it
  uint64_t seed = 0;                // std::mt19937_64 seed: same seed, same draws

  // Throws moeflux::Error naming the option for a value out of range (negative temperature,
  // top_p outside (0,1], min_p outside [0,1], repetition_penalty <= 0, top_k < 0, ...).
  void validate() const;
};

struct TokenProb {
  int id;
  double p;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& opts);

  // The next token after `history` (the sequence so far: prompt and generated ids), given the
  // model's logits [vocab] for the next position. Advances the random generator once per
  // non-greedy call.
  int sample(std::span<const float> logits, std::span<const int> history);

  // Steps 1-7 without the draw: the kept tokens in descending probability (ties: lower id
  // first), renormalised to sum to 1. For temperature 0, the argmax alone with p = 1.
  std::vector<TokenProb> distribution(std::span<const float> logits, std::span<const int> history);

  const SamplerOptions& options() const { return opts_; }
  // sample() is the logits' plain greedy pick (core/argmax.hpp): temperature 0 and no penalty,
  // so a caller may take the pick the engine computed where the logits are (Session::eval_token)
  // instead; it draws no random number either way.
  bool plain_greedy() const { return opts_.temperature == 0.0f && no_penalties(); }
  void reseed(uint64_t seed) { rng_.seed(seed); }

  // k when sample() over `vocab` logits needs only their k best (core/top_k.hpp's order): a
  // temperature above 0, no penalty, top-k on and below the vocabulary; else 0. A caller that
  // has those k best from where the logits are (Backend::top_k_rows) may then call
  // sample_top_k(): the same token as sample() on the whole logits, bit for bit, drawing once.
  size_t top_k_candidates(size_t vocab) const;
  int sample_top_k(std::span<const TopEntry> best);  // best: the k best, best first

 private:
  void apply_penalties(std::span<const float> logits, std::span<const int> history);
  bool no_penalties() const {  // steps 1-2 leave the logits as they are
    return opts_.repetition_penalty == 1.0f && opts_.presence_penalty == 0.0f;
  }
  void filter();                                      // steps 4-7 on work_ into cand_
  void filter_top_k(std::span<const TopEntry> best);  // steps 4-7 from the k best
  void keep(double Z);                                // steps 6-7 on the sorted pool_
  int draw();                                         // step 8 over cand_
  struct Cand {
    int id;
    float logit;
    double w;  // exp((logit - max logit) / T)
  };

  SamplerOptions opts_;
  std::mt19937_64 rng_;
  std::vector<float> work_;      // penalised logits [vocab]
  std::vector<Cand> pool_;       // candidates being filtered
  std::vector<double> weights_;  // [vocab] exp((l - max) / T), without top-k
  std::vector<TokenProb> cand_;  // kept candidates, p renormalised
  std::vector<TopEntry> best_;   // the k best of work_ (top-k)
};

// Steps 1-2 in place on `logits` [vocab] (exposed for tests). Ids in `history` outside the
// vocabulary are ignored.
void apply_penalties(std::span<float> logits, std::span<const int> history,
                     float repetition_penalty, float presence_penalty, int penalty_last_n);

// u in [0, 1) from the top 53 bits of one mt19937_64 output (the same on every platform,
// unlike std::uniform_real_distribution).
inline double uniform01(std::mt19937_64& rng) {
  return double(rng() >> 11) * 0x1.0p-53;
}

}  // namespace moeflux
