// The sampler chain on small hand-made distributions: each filter's effect, the penalty formulas
// of transformers, greedy, seed determinism, and the empirical distribution of draws.
#include "sample/sampler.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/argmax.hpp"
#include "core/error.hpp"
#include "core/top_k.hpp"

namespace moeflux::test {
namespace {

// Logits whose softmax (T = 1) is exactly `probs` (up to rounding): l_i = log p_i.
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(float(std::log(p)));
  return l;
}

SamplerOptions plain(float temperature = 1.0f) {
  SamplerOptions o;
  o.temperature = temperature;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0.0f;
  return o;
}

std::vector<int> ids(const std::vector<TokenProb>& d) {
  std::vector<int> v;
  for (const auto& t : d) v.push_back(t.id);
  return v;
}

// argmax against the plain definition (the first index of the largest non-NaN value; 0 when
// there is none), on random arrays of sizes around its 16 lanes and a vocabulary's, with ties
// planted in different lanes, NaN, and arrays of only -inf or NaN.
TEST(Argmax, FirstIndexOfTheLargestNonNanValue) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  auto reference = [](const std::vector<float>& x) {
    size_t best = 0;
    bool any = false;
    for (size_t i = 0; i < x.size(); ++i)
      if (!std::isnan(x[i]) && (!any || x[i] > x[best])) best = i, any = true;
    return best;
  };
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> u(-5, 5);
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{33},
                   size_t{1000}, size_t{151936}}) {
    for (int round = 0; round < 4; ++round) {
      std::vector<float> x(n);
      for (float& v : x) v = u(rng);
      if (n > 2 && round >= 1) {  // a tie: the later copy must lose
        std::uniform_int_distribution<size_t> at(0, n - 1);
        const size_t a = at(rng), b = at(rng);
        x[std::max(a, b)] = x[std::min(a, b)] = 6.0f;
      }
      if (n > 0 && round >= 2) x[0] = nan;
      if (n > 3 && round == 3) x[n / 2] = nan, x[n - 1] = -inf;
      EXPECT_EQ(argmax(x), reference(x)) << "n " << n << " round " << round;
    }
  }
  EXPECT_EQ(argmax(std::vector<float>(40, -inf)), 0u);
  EXPECT_EQ(argmax(std::vector<float>(40, nan)), 0u);
  std::vector<float> late(40, nan);
  late[37] = -inf;
  EXPECT_EQ(argmax(late), 37u);
}

TEST(Sampler, GreedyPicksArgmaxLowestIdOnTies) {
  Sampler s(plain(0.0f));
  const std::vector<float> l = {0.1f, 3.0f, -2.0f, 2.9f};
  EXPECT_EQ(s.sample(l, {}), 1);
  const std::vector<float> tie = {1.0f, 5.0f, 5.0f, 0.0f};
  EXPECT_EQ(s.sample(tie, {}), 1);
  const auto d = s.distribution(tie, {});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].id, 1);
  EXPECT_EQ(d[0].p, 1.0);
}

TEST(Sampler, GreedyIgnoresFiltersButHonoursPenalties) {
  SamplerOptions o = plain(0.0f);
  o.top_k = 1;
  o.repetition_penalty = 4.0f;
  Sampler s(o);
  const std::vector<float> l = {2.0f, 1.0f};
  const std::vector<int> hist = {0};
  EXPECT_EQ(s.sample(l, hist), 1);  // 2 / 4 = 0.5 < 1
}

TEST(Sampler, TemperatureScalesSoftmax) {
  const std::vector<float> l = {1.0f, 2.0f, 0.0f};
  for (float T : {0.5f, 1.0f, 2.0f}) {
    Sampler s(plain(T));
    const auto d = s.distribution(l, {});
    ASSERT_EQ(d.size(), 3u);
    double z = 0;
    for (float v : l) z += std::exp(double(v) / T);
    EXPECT_EQ(ids(d), (std::vector<int>{1, 0, 2}));
    for (const auto& t : d) EXPECT_NEAR(t.p, std::exp(double(l[size_t(t.id)]) / T) / z, 1e-12);
  }
}

TEST(Sampler, TopKKeepsTheKLargest) {
  SamplerOptions o = plain();
  o.top_k = 2;
  Sampler s(o);
  const auto d = s.distribution(logits_of({0.1, 0.4, 0.2, 0.3}), {});
  EXPECT_EQ(ids(d), (std::vector<int>{1, 3}));
  EXPECT_NEAR(d[0].p, 0.4 / 0.7, 1e-6);
  EXPECT_NEAR(d[1].p, 0.3 / 0.7, 1e-6);
  o.top_k = 10;  // more than the vocabulary: off
  EXPECT_EQ(Sampler(o).distribution(logits_of({0.1, 0.4, 0.2, 0.3}), {}).size(), 4u);
}

// Top-k over a vocabulary of many blocks (the selection skips blocks whose largest logit cannot
// enter): ties keep the lowest ids, a logit equal to the k-th best arriving later stays out,
// larger ones anywhere in a block (its first and last slots included) come in, NaN never.
TEST(Sampler, TopKOverManyBlocksKeepsTheLowestIdsOfTies) {
  const size_t V = 1000;
  std::vector<float> l(V, 1.0f);
  l[3] = std::nanf("");
  SamplerOptions o = plain();
  o.top_k = 5;
  auto top = [&] { return ids(Sampler(o).distribution(l, {})); };
  EXPECT_EQ(top(), (std::vector<int>{0, 1, 2, 4, 5}));
  l[640] = 2.0f;  // the first slot of a block
  l[703] = 3.0f;  // the last slot of one
  l[999] = 2.5f;  // in the tail after the last whole block
  l[64] = std::nanf("");
  EXPECT_EQ(top(), (std::vector<int>{703, 999, 640, 0, 1}));
  for (float& v : l) v = -1.0f;  // all equal, but one NaN: the k lowest ids without it
  l[2] = std::nanf("");
  EXPECT_EQ(top(), (std::vector<int>{0, 1, 3, 4, 5}));
}

// core/top_k against a full sort (value descending, NaN as -inf, then id ascending) on random
// arrays with ties, NaN and infinities, sizes around its 64-value blocks and a vocabulary's, k
// from 1 to past the size.
TEST(TopK, MatchesAFullSortWithNanAsMinusInfinity) {
  std::mt19937 g(11);
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  std::vector<TopEntry> got;
  for (size_t n : {1, 5, 63, 64, 65, 200, 4099, 151936})
    for (size_t k : {1, 2, 40, 64, 300})
      for (int trial = 0; trial < 2; ++trial) {
        std::vector<float> x(n);
        std::uniform_int_distribution<int> small(-3, 3);  // many ties
        std::uniform_int_distribution<int> pick(0, 99);
        for (float& v : x) {
          const int p = pick(g);
          v = p < 3 ? nan : p < 5 ? -inf : p < 6 ? inf : trial ? float(small(g)) : float(p) / 7;
        }
        std::vector<TopEntry> all;
        for (size_t i = 0; i < n; ++i) all.push_back({int(i), x[i] == x[i] ? x[i] : -inf});
        std::sort(all.begin(), all.end(), better_entry);
        all.resize(std::min(k, n));
        top_k(x, k, got);
        ASSERT_EQ(got.size(), all.size()) << "n " << n << " k " << k;
        for (size_t i = 0; i < all.size(); ++i) {
          EXPECT_EQ(got[i].id, all[i].id) << "n " << n << " k " << k << " rank " << i;
          EXPECT_EQ(got[i].value, all[i].value) << "n " << n << " k " << k << " rank " << i;
        }
      }
}

// sample_top_k on the k best (as a backend's top_k_rows gives them) draws the same tokens as
// sample() on the whole logits, seed for seed: the probabilities are computed from the k best in
// the same order either way.
TEST(Sampler, DrawsFromTheKBestEqualDrawsFromTheLogits) {
  std::mt19937_64 g(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> l(30000);
  std::vector<TopEntry> best;
  for (int k : {1, 20, 40, 100}) {
    SamplerOptions o;  // defaults: temperature, top-p and min-p on
    o.top_k = k;
    o.seed = 3;
    Sampler whole(o), from_best(o);
    ASSERT_EQ(whole.top_k_candidates(l.size()), size_t(k));
    for (int step = 0; step < 50; ++step) {
      for (auto& x : l) x = normal(g);
      l[size_t(step) * 7] = l[size_t(step) * 7 + 1] = 12.0f;  // a tie at the top
      top_k(l, size_t(k), best);
      EXPECT_EQ(from_best.sample_top_k(best), whole.sample(l, {})) << "k " << k << " step " << step;
    }
  }
  // Only where the k best are all the sampler needs.
  SamplerOptions o;
  EXPECT_EQ(Sampler(o).top_k_candidates(30000), size_t(o.top_k));
  EXPECT_EQ(Sampler(o).top_k_candidates(size_t(o.top_k)), 0u);  // top-k not below the vocabulary
  o.repetition_penalty = 1.1f;
  EXPECT_EQ(Sampler(o).top_k_candidates(30000), 0u);
  o = SamplerOptions();
  o.presence_penalty = 0.5f;
  EXPECT_EQ(Sampler(o).top_k_candidates(30000), 0u);
  o = SamplerOptions();
  o.temperature = 0;
  EXPECT_EQ(Sampler(o).top_k_candidates(30000), 0u);
  o = SamplerOptions();
  o.top_k = 0;
  EXPECT_EQ(Sampler(o).top_k_candidates(30000), 0u);
}

TEST(Sampler, TopPKeepsTheSmallestPrefixReachingP) {
  const auto l = logits_of({0.15, 0.5, 0.05, 0.3});  // sorted: 1 (.5), 3 (.3), 0 (.15), 2 (.05)
  auto kept = [&](float p) {
    SamplerOptions o = plain();
    o.top_p = p;
    return ids(Sampler(o).distribution(l, {}));
  };
  EXPECT_EQ(kept(0.4f), (std::vector<int>{1}));
  EXPECT_EQ(kept(0.6f), (std::vector<int>{1, 3}));
  EXPECT_EQ(kept(0.9f), (std::vector<int>{1, 3, 0}));
  EXPECT_EQ(kept(0.97f), (std::vector<int>{1, 3, 0, 2}));
  EXPECT_EQ(kept(1e-6f), (std::vector<int>{1}));  // at least one token
  SamplerOptions o = plain();
  o.top_p = 0.9f;
  const auto d = Sampler(o).distribution(l, {});
  EXPECT_NEAR(d[0].p, 0.5 / 0.95, 1e-6);
  EXPECT_NEAR(d[2].p, 0.15 / 0.95, 1e-6);
}

TEST(Sampler, MinPIsRelativeToTheMostLikelyToken) {
  const auto l = logits_of({0.15, 0.5, 0.05, 0.3});
  auto kept = [&](float p) {
    SamplerOptions o = plain();
    o.min_p = p;
    return ids(Sampler(o).distribution(l, {}));
  };
  EXPECT_EQ(kept(0.25f), (std::vector<int>{1, 3, 0}));  // threshold 0.125
  EXPECT_EQ(kept(0.5f), (std::vector<int>{1, 3}));      // threshold 0.25
  EXPECT_EQ(kept(0.7f), (std::vector<int>{1}));         // threshold 0.35
  EXPECT_EQ(kept(1.0f), (std::vector<int>{1}));
}

TEST(Sampler, FiltersApplyInOrderTopKThenTopP) {
  // top-k 2 renormalises to {4/7, 3/7}; top-p 0.5 then keeps only the first. Without top-k,
  // top-p 0.5 keeps two (mass before the second is 0.4 < 0.5).
  const auto l = logits_of({0.4, 0.3, 0.2, 0.1});
  SamplerOptions o = plain();
  o.top_p = 0.5f;
  EXPECT_EQ(ids(Sampler(o).distribution(l, {})), (std::vector<int>{0, 1}));
  o.top_k = 2;
  EXPECT_EQ(ids(Sampler(o).distribution(l, {})), (std::vector<int>{0}));
}

TEST(Sampler, TemperatureAppliesBeforeTopP) {
  // T = 0.5 squares and renormalises: {.4,.3,.2,.1} -> {16,9,4,1}/30; top-p 0.5 keeps one
  // (mass 0.533 before the second >= 0.5); at T = 1 the mass before the second is 0.4 < 0.5.
  const auto l = logits_of({0.4, 0.3, 0.2, 0.1});
  SamplerOptions o = plain(0.5f);
  o.top_p = 0.5f;
  EXPECT_EQ(ids(Sampler(o).distribution(l, {})), (std::vector<int>{0}));
  o.temperature = 1.0f;
  EXPECT_EQ(ids(Sampler(o).distribution(l, {})), (std::vector<int>{0, 1}));
}

TEST(Sampler, PenaltiesMatchTransformers) {
  // HF RepetitionPenaltyLogitsProcessor: score = score < 0 ? score * p : score / p, gathered
  // once per distinct id in input_ids. Presence penalty subtracts once per distinct id.
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f};
  const std::vector<int> hist = {0, 1, 0, 4, 99, -3};  // out-of-range ids ignored
  apply_penalties(l, hist, 2.0f, 0.0f, 0);
  EXPECT_EQ(l, (std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f, 0.0f}));
  l = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f};
  apply_penalties(l, hist, 1.0f, 0.5f, 0);
  EXPECT_EQ(l, (std::vector<float>{1.5f, -1.5f, 0.5f, 3.0f, -0.5f}));
  l = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f};
  apply_penalties(l, hist, 2.0f, 0.25f, 0);
  EXPECT_EQ(l, (std::vector<float>{0.75f, -2.25f, 0.5f, 3.0f, -0.25f}));
  // Window: only the last 3 ids (4, 99, -3) count.
  l = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f};
  apply_penalties(l, hist, 2.0f, 1.0f, 3);
  EXPECT_EQ(l, (std::vector<float>{2.0f, -1.0f, 0.5f, 3.0f, -1.0f}));
}

TEST(Sampler, PenaltiesChangeTheDistribution) {
  SamplerOptions o = plain();
  o.repetition_penalty = 2.0f;
  const std::vector<float> l = {1.0f, 1.0f};
  const std::vector<int> hist = {0};
  const auto d = Sampler(o).distribution(l, hist);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].id, 1);
  EXPECT_NEAR(d[0].p, 1.0 / (1.0 + std::exp(-0.5)), 1e-9);
}

TEST(Sampler, SameSeedSameDrawsDifferentSeedDifferentDraws) {
  const auto l = logits_of({0.2, 0.2, 0.2, 0.2, 0.2});
  SamplerOptions o = plain();
  o.seed = 42;
  auto draws = [&](uint64_t seed) {
    o.seed = seed;
    Sampler s(o);
    std::vector<int> v;
    for (int i = 0; i < 64; ++i) v.push_back(s.sample(l, {}));
    return v;
  };
  EXPECT_EQ(draws(42), draws(42));
  EXPECT_NE(draws(42), draws(43));
  Sampler s(o);
  const int first = s.sample(l, {});
  s.reseed(o.seed);
  EXPECT_EQ(s.sample(l, {}), first);
}

TEST(Sampler, DrawsFollowTheProbabilities) {
  // Pearson chi-square of 200000 draws against the expected counts. The seed is fixed, so the
  // statistic is one deterministic number; the bound (the 0.9999 quantile of chi-square with
  // 4 degrees of freedom is 23.5) only says the generator and the walk are not biased.
  const std::vector<double> p = {0.05, 0.1, 0.15, 0.3, 0.4};
  SamplerOptions o = plain();
  o.seed = 12345;
  Sampler s(o);
  const auto l = logits_of(p);
  std::vector<int> counts(p.size(), 0);
  const int n = 200000;
  for (int i = 0; i < n; ++i) ++counts[size_t(s.sample(l, {}))];
  double chi2 = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double e = n * p[i];
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  EXPECT_LT(chi2, 23.5) << "counts " << counts[0] << " " << counts[1] << " " << counts[2] << " "
                        << counts[3] << " " << counts[4];
  // And a filtered distribution: top-k 2 leaves {0.4, 0.3} -> {4/7, 3/7}; no other token drawn.
  o.top_k = 2;
  Sampler k2(o);
  std::vector<int> c2(p.size(), 0);
  for (int i = 0; i < n; ++i) ++c2[size_t(k2.sample(l, {}))];
  EXPECT_EQ(c2[0] + c2[1] + c2[2], 0);
  const double e4 = n * 4.0 / 7, e3 = n * 3.0 / 7;
  EXPECT_LT((c2[4] - e4) * (c2[4] - e4) / e4 + (c2[3] - e3) * (c2[3] - e3) / e3, 15.2);
}

// The chain over a large vocabulary equals a direct reference: sort everything, softmax, cut.
// (The sampler itself sorts only the tokens that can survive.)
TEST(Sampler, LargeVocabularyMatchesAFullSortReference) {
  std::mt19937_64 g(7);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  std::vector<float> l(20000);
  for (auto& x : l) x = normal(g);
  l[17] = l[18] = l[19];  // ties are ordered by id
  auto reference = [&](const SamplerOptions& o) {
    std::vector<int> idx(l.size());
    for (size_t i = 0; i < l.size(); ++i) idx[i] = int(i);
    std::sort(idx.begin(), idx.end(), [&](int a, int b) {
      return l[size_t(a)] > l[size_t(b)] || (l[size_t(a)] == l[size_t(b)] && a < b);
    });
    if (o.top_k > 0) idx.resize(size_t(o.top_k));
    std::vector<double> p;
    double z = 0;
    for (int i : idx) z += std::exp((double(l[size_t(i)]) - l[size_t(idx[0])]) / o.temperature);
    for (int i : idx)
      p.push_back(std::exp((double(l[size_t(i)]) - l[size_t(idx[0])]) / o.temperature) / z);
    size_t n = idx.size();
    if (o.top_p < 1) {
      double before = 0;
      size_t keep = 0;
      while (keep < n && (keep == 0 || before < o.top_p)) before += p[keep++];
      n = keep;
    }
    if (o.min_p > 0) {
      size_t keep = 1;
      while (keep < n && p[keep] >= o.min_p * p[0]) ++keep;
      n = keep;
    }
    idx.resize(n);
    return idx;
  };
  for (int k : {0, 50})
    for (float top_p : {1.0f, 0.999f, 0.9f, 0.3f})
      for (float min_p : {0.0f, 1e-6f, 0.01f, 0.2f})
        for (float T : {0.3f, 1.0f, 3.0f}) {
          if (top_p == 1.0f && min_p == 0.0f && k == 0 && T != 1.0f) continue;
          SamplerOptions o = plain(T);
          o.top_k = k;
          o.top_p = top_p;
          o.min_p = min_p;
          const auto d = Sampler(o).distribution(l, {});
          EXPECT_EQ(ids(d), reference(o))
              << "k " << k << " top_p " << top_p << " min_p " << min_p << " T " << T;
          double sum = 0;
          for (const auto& t : d) sum += t.p;
          EXPECT_NEAR(sum, 1.0, 1e-12);
        }
}

TEST(Sampler, NaNLogitsAreNeverDrawn) {
  SamplerOptions o = plain();
  Sampler s(o);
  const std::vector<float> l = {std::nanf(""), 0.0f, std::nanf("")};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s.sample(l, {}), 1);
}

TEST(Sampler, RejectsBadOptions) {
  auto bad = [](auto edit) {
    SamplerOptions o;
    edit(o);
    EXPECT_THROW(Sampler{o}, Error);
  };
  bad([](SamplerOptions& o) { o.temperature = -0.1f; });
  bad([](SamplerOptions& o) { o.temperature = INFINITY; });
  bad([](SamplerOptions& o) { o.top_k = -1; });
  bad([](SamplerOptions& o) { o.top_p = 0.0f; });
  bad([](SamplerOptions& o) { o.top_p = 1.5f; });
  bad([](SamplerOptions& o) { o.min_p = -0.5f; });
  bad([](SamplerOptions& o) { o.repetition_penalty = 0.0f; });
  bad([](SamplerOptions& o) { o.presence_penalty = NAN; });
  SamplerOptions ok;
  EXPECT_NO_THROW(Sampler{ok});
}

}  // namespace
}  // namespace moeflux::test
