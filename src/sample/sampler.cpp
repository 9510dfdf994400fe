#include "sample/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "core/argmax.hpp"
#include "core/error.hpp"
#include "core/top_k.hpp"

namespace moeflux {

namespace {

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

void SamplerOptions::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature))
    fail("--temp: temperature must be a finite number >= 0 (got " + num(temperature) + ")");
  if (top_k < 0) fail("--top-k: must be >= 0 (0 = off), got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1)) fail("--top-p: must be in (0, 1] (1 = off), got " + num(top_p));
  if (!(min_p >= 0 && min_p <= 1)) fail("--min-p: must be in [0, 1] (0 = off), got " + num(min_p));
  if (!(repetition_penalty > 0) || !std::isfinite(repetition_penalty))
    fail("--repeat-penalty: must be a finite number > 0 (1 = off), got " + num(repetition_penalty));
  if (!std::isfinite(presence_penalty))
    fail("--presence-penalty: must be finite, got " + num(presence_penalty));
  if (penalty_last_n < 0)
    fail("penalty window must be >= 0 (0 = whole sequence), got " + std::to_string(penalty_last_n));
}

void apply_penalties(std::span<float> logits, std::span<const int> history,
                     float repetition_penalty, float presence_penalty, int penalty_last_n) {
  if (repetition_penalty == 1.0f && presence_penalty == 0.0f) return;
  if (penalty_last_n > 0 && history.size() > size_t(penalty_last_n))
    history = history.subspan(history.size() - size_t(penalty_last_n));
  std::vector<uint8_t> seen(logits.size(), 0);
  for (int t : history) {
    if (t < 0 || size_t(t) >= logits.size() || seen[size_t(t)]) continue;
    seen[size_t(t)] = 1;
    float& l = logits[size_t(t)];
    // HF RepetitionPenaltyLogitsProcessor: l > 0 ? l / p : l * p (once per distinct token).
    l = l > 0 ? l / repetition_penalty : l * repetition_penalty;
    // OpenAI-style presence penalty: once per distinct seen token.
    l -= presence_penalty;
  }
}

Sampler::Sampler(const SamplerOptions& opts) : opts_(opts), rng_(opts.seed) {
  opts_.validate();
}

void Sampler::apply_penalties(std::span<const float> logits, std::span<const int> history) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  work_.resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i)  // one vectorisable pass: NaN as -inf
    work_[i] = logits[i] == logits[i] ? logits[i] : kNegInf;
  moeflux::apply_penalties(work_, history, opts_.repetition_penalty, opts_.presence_penalty,
                           opts_.penalty_last_n);
}

// Work is O(vocab) plus a sort of the few candidates that can survive: with top-k, the k best
// (core/top_k.hpp: a heap of k); without, only tokens whose weight w = p / p_max is at least a
// threshold tau are sorted, where tau is chosen so that the kept set provably lies inside them
// (tau <= min_p, or the tokens with w >= tau already hold the top_p mass); tau falls to 0 (a
// full sort) only if nothing smaller suffices.
void Sampler::filter() {
  const size_t V = work_.size();
  MF_ASSERT(V > 0);
  if (opts_.top_k > 0 && size_t(opts_.top_k) < V) {
    top_k(work_, size_t(opts_.top_k), best_);
    filter_top_k(best_);
    return;
  }
  const float lmax = max_value(work_);  // one pass (argmax's first)
  MF_ASSERT(std::isfinite(lmax));       // some token must be possible
  const double T = opts_.temperature;
  weights_.resize(V);
  double Z = 0;  // softmax denominator over the whole vocabulary
  for (size_t i = 0; i < V; ++i)
    Z += (weights_[i] = std::exp((double(work_[i]) - double(lmax)) / T));
  const double min_p = opts_.min_p, top_p = opts_.top_p;
  for (double tau : {min_p > 0 ? min_p * (1 - 1e-9) : 1e-4, 1e-8, 0.0}) {
    pool_.clear();
    double mass = 0;
    for (size_t i = 0; i < V; ++i)
      if (weights_[i] >= tau) {
        pool_.push_back({int(i), work_[i], weights_[i]});
        mass += weights_[i];
      }
    const bool min_p_inside = min_p > 0 && tau <= min_p;
    const bool top_p_inside = top_p < 1 && mass >= double(top_p) * Z * (1 + 1e-9);
    if (tau == 0 || min_p_inside || top_p_inside) break;
  }
  std::sort(pool_.begin(), pool_.end(), [](const Cand& a, const Cand& b) {
    return better_entry({a.id, a.logit}, {b.id, b.logit});
  });
  keep(Z);
}

// The top-k path from the k best (best first): the weights and their sum in that order, so that
// the same k best give the same probabilities bit for bit, wherever they were selected.
void Sampler::filter_top_k(std::span<const TopEntry> best) {
  MF_ASSERT(!best.empty());
  const double lmax = best[0].value, T = opts_.temperature;
  MF_ASSERT(std::isfinite(lmax));  // some token must be possible
  pool_.clear();
  double Z = 0;  // softmax denominator over the tokens top-k keeps
  for (const TopEntry& e : best) {
    const double w = std::exp((double(e.value) - lmax) / T);
    pool_.push_back({e.id, e.value, w});
    Z += w;
  }
  keep(Z);
}

// Steps 6-7 over pool_ (sorted best first; Z: the softmax denominator) into cand_.
void Sampler::keep(double Z) {
  const size_t n_pool = pool_.size();
  cand_.resize(n_pool);
  for (size_t i = 0; i < n_pool; ++i) cand_[i] = {pool_[i].id, pool_[i].w / Z};  // softmax(l / T)
  size_t n = n_pool;
  // Top-p: keep token r while the mass of tokens ranked above it is < top_p.
  if (opts_.top_p < 1.0f) {
    double before = 0;
    size_t kept = 0;
    while (kept < n && (kept == 0 || before < double(opts_.top_p))) before += cand_[kept++].p;
    n = kept;
  }
  // Min-p: keep p_i >= min_p * p_max (p_max = cand_[0].p; renormalising does not change ratios).
  if (opts_.min_p > 0.0f) {
    const double threshold = double(opts_.min_p) * cand_[0].p;
    size_t kept = 1;
    while (kept < n && cand_[kept].p >= threshold) ++kept;
    n = kept;
  }
  cand_.resize(n);
  double mass = 0;
  for (const auto& c : cand_) mass += c.p;
  for (auto& c : cand_) c.p /= mass;
}

std::vector<TokenProb> Sampler::distribution(std::span<const float> logits,
                                             std::span<const int> history) {
  apply_penalties(logits, history);
  if (opts_.temperature == 0.0f) {
    return {{int(argmax(work_)), 1.0}};
  }
  filter();
  return cand_;
}

size_t Sampler::top_k_candidates(size_t vocab) const {
  const bool plain = opts_.temperature > 0.0f && no_penalties();
  return plain && opts_.top_k > 0 && size_t(opts_.top_k) < vocab ? size_t(opts_.top_k) : 0;
}

int Sampler::sample_top_k(std::span<const TopEntry> best) {
  MF_ASSERT(best.size() == size_t(opts_.top_k) && opts_.temperature > 0.0f);
  filter_top_k(best);
  return draw();
}

int Sampler::sample(std::span<const float> logits, std::span<const int> history) {
  apply_penalties(logits, history);
  // Greedy: argmax, the first (lowest id) of equal maxima.
  if (opts_.temperature == 0.0f) return int(argmax(work_));
  filter();
  return draw();
}

int Sampler::draw() {
  const double u = uniform01(rng_);
  double acc = 0;
  for (const auto& c : cand_) {
    acc += c.p;
    if (u < acc) return c.id;
  }
  return cand_.back().id;  // u within rounding of 1
}

}  // namespace moeflux
