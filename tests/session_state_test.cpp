// Session state: snapshots (state_save / state_load) give bit-identical next logits and are
// validated before anything changes; memory_seq_rm + re-evaluation equals a fresh evaluation,
// for the attention-only family and the hybrid DeltaNet family; checkpoints stay in budget.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/argmax.hpp"
#include "core/top_k.hpp"
#include "runtime/session.hpp"
#include "streaming_fixture.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

class SessionStateTest : public StreamingFixture {
 protected:
  void SetUp() override {
    StreamingFixture::SetUp();
    if (HasFatalFailure()) return;
    EngineOptions o;
    o.threads = 2;
    o.stream.ram_cache_bytes = all_experts_bytes();
    engine_ = std::make_unique<Engine>(*model_, o);
  }
  std::vector<int> ids(size_t b, size_t e) const {
    return std::vector<int>(tokens_.begin() + b, tokens_.begin() + e);
  }
  bool recurrent() const {
    for (LayerKind k : model_->config().layer_kind)
      if (k == LayerKind::LinearAttention) return true;
    return false;
  }
  std::unique_ptr<Engine> engine_;
};

TEST_P(SessionStateTest, SnapshotRoundTripGivesBitIdenticalNextLogits) {
  ASSERT_GE(tokens_.size(), 12u);
  Session a(*engine_);
  a.eval_prompt(ids(0, 6));
  for (size_t i = 6; i < 9; ++i) a.eval_token(tokens_[i]);
  const std::vector<std::byte> state = a.state_save();
  EXPECT_EQ(state.size(), a.state_size());
  TempDir dir;
  a.state_save_file(dir / "s.state");

  for (bool from_file : {false, true}) {
    Session b(*engine_);
    b.eval_prompt(ids(3, 5));  // something else, replaced by the load
    if (from_file)
      b.state_load_file(dir / "s.state");
    else
      b.state_load(state);
    EXPECT_EQ(b.position(), a.position());
    EXPECT_EQ(b.tokens(), a.tokens());
    expect_identical(b.logits(), a.logits(), "loading the state");
    Session c(*engine_);
    c.state_load(state);
    for (size_t i = 9; i < 12; ++i)
      expect_identical(b.eval_token(tokens_[i]), c.eval_token(tokens_[i]), "the next tokens");
  }
  std::vector<float> want;
  for (size_t i = 9; i < 12; ++i) want = a.eval_token(tokens_[i]);
  Session d(*engine_);
  d.state_load(state);
  for (size_t i = 9; i < 12; ++i) d.eval_token(tokens_[i]);
  expect_identical(d.logits(), want, "a loaded session against the original");
}

TEST_P(SessionStateTest, BadStatesAreRefusedBeforeAnythingChanges) {
  Session a(*engine_);
  a.eval_prompt(ids(0, 5));
  const std::vector<std::byte> good = a.state_save();
  Session b(*engine_);
  b.eval_prompt(ids(2, 4));
  const std::vector<float> logits_before = b.logits();
  const std::vector<int> tokens_before = b.tokens();
  auto expect_refused = [&](std::vector<std::byte> bad, const std::string& what,
                            const std::string& message) {
    try {
      b.state_load(bad);
      ADD_FAILURE() << what << " was loaded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << what << ": " << e.what();
    }
    EXPECT_EQ(b.tokens(), tokens_before) << what;
    expect_identical(b.logits(), logits_before, what);
  };
  expect_refused(std::vector<std::byte>(good.begin(), good.begin() + 20), "a truncated header",
                 "truncated");
  expect_refused(std::vector<std::byte>(good.begin(), good.end() - 9), "a truncated body",
                 "header says");
  std::vector<std::byte> bad = good;
  bad[bad.size() / 2] ^= std::byte{1};
  expect_refused(bad, "a flipped bit", "checksum");
  bad = good;
  bad[0] = std::byte{'X'};
  expect_refused(bad, "another magic", "not a moeflux state");
  bad = good;
  bad[8] = std::byte{9};  // version
  expect_refused(bad, "another version", "version 9");
  bad = good;
  bad[20] ^= std::byte{0xff};  // model key
  expect_refused(bad, "another model", "another model");
  // A state longer than the session's context.
  EngineOptions small;
  small.threads = 2;
  small.context = 3;
  Engine e3(*model_, small);
  Session tiny(e3);
  EXPECT_THROW(tiny.state_load(good), Error);
  EXPECT_EQ(tiny.position(), 0);
  // Files: missing, a directory, garbage.
  TempDir dir;
  EXPECT_THROW(b.state_load_file(dir / "missing"), Error);
  EXPECT_THROW(b.state_load_file(dir.path().string()), Error);
  std::ofstream(dir / "junk") << "not a state";
  EXPECT_THROW(b.state_load_file(dir / "junk"), Error);
  EXPECT_EQ(b.tokens(), tokens_before);
  // A state file written over an existing one is replaced whole.
  a.state_save_file(dir / "junk");
  b.state_load_file(dir / "junk");
  EXPECT_EQ(b.tokens(), a.tokens());
}

// Reference: ids [0, 8) as one prompt, then ids [8, n) the way the cut session evaluates them
// again (the recurrent family replays from the checkpoint at 8 as one prompt chunk; the
// attention-only family re-evaluates id n - 1 alone), then the continuation token by token.
TEST_P(SessionStateTest, SeqRmAndReEvaluationEqualsAFreshEvaluation) {
  ASSERT_GE(tokens_.size(), 16u);
  const std::vector<int> other = {tokens_[13], tokens_[2], tokens_[7]};
  for (int cut : {8, 10}) {
    Session s(*engine_);
    s.eval_prompt(ids(0, 8));  // checkpoint at 8
    for (size_t i = 8; i < 13; ++i) s.eval_token(tokens_[i]);
    s.memory_seq_rm(cut);
    EXPECT_EQ(s.position(), cut);
    EXPECT_EQ(s.tokens(), ids(0, cut));

    Session f(*engine_);
    f.eval_prompt(ids(0, 8));
    if (cut > 8) {
      if (recurrent()) {
        f.eval_prompt(ids(8, cut));
      } else {
        for (int i = 8; i < cut; ++i) f.eval_token(tokens_[i]);
      }
    }
    expect_identical(s.logits(), f.logits(), "logits after the cut at " + std::to_string(cut));
    for (int t : other)
      expect_identical(s.eval_token(t), f.eval_token(t), "after the cut at " + std::to_string(cut));

    // And close to plain token-by-token evaluation (other kernels, same arithmetic).
    Session g(*engine_);
    for (int i = 0; i < cut; ++i) g.eval_token(tokens_[i]);
    for (int t : other) g.eval_token(t);
    double num = 0, den = 0;
    for (size_t v = 0; v < g.logits().size(); ++v) {
      num += std::pow(double(s.logits()[v]) - g.logits()[v], 2);
      den += std::pow(double(g.logits()[v]), 2);
    }
    EXPECT_LT(std::sqrt(num / den), 1e-4) << "cut at " << cut;
  }
  const CheckpointStats st = [&] {
    Session s(*engine_);
    s.eval_prompt(ids(0, 8));
    for (size_t i = 8; i < 12; ++i) s.eval_token(tokens_[i]);
    s.memory_seq_rm(8);
    return s.checkpoint_stats();
  }();
  EXPECT_EQ(st.restored, 1u);
  EXPECT_EQ(st.replayed_tokens, 0u);
}

TEST_P(SessionStateTest, WithoutCheckpointsACutEvaluatesThePrefixAgain) {
  Session s(*engine_);
  s.set_checkpoint_budget(0);
  // Positions [0, 5) as the reference evaluates them (a chunk's rows may differ in the last bits
  // from another chunk size's).
  s.eval_prompt(ids(0, 5));
  EXPECT_EQ(s.checkpoint_stats().count, 0u);
  for (size_t i = 5; i < 12; ++i) s.eval_token(tokens_[i]);
  s.memory_seq_rm(6);
  Session f(*engine_);
  if (recurrent()) {
    f.eval_prompt(ids(0, 6));
  } else {
    f.eval_prompt(ids(0, 5));
    f.eval_token(tokens_[5]);
  }
  expect_identical(s.logits(), f.logits(), "a cut without checkpoints");
  expect_identical(s.eval_token(tokens_[1]), f.eval_token(tokens_[1]), "the next token");
  s.memory_seq_rm(0);
  EXPECT_EQ(s.position(), 0);
}

TEST_P(SessionStateTest, OnlyTheEndCanBeRemovedAndCheckpointsStayInBudget) {
  Session s(*engine_);
  s.eval_prompt(ids(0, 6));
  EXPECT_THROW(s.memory_seq_rm(2, 4), Error);
  EXPECT_THROW(s.memory_seq_rm(7), Error);
  EXPECT_THROW(s.memory_seq_rm(-1), Error);
  EXPECT_EQ(s.position(), 6);
  const size_t one = s.checkpoint_stats().bytes;
  ASSERT_GT(one, 0u);
  s.set_checkpoint_budget(2 * one);
  for (size_t i = 6; i < 10; ++i) {
    s.eval_token(tokens_[i]);
    s.checkpoint();
    EXPECT_LE(s.checkpoint_stats().bytes, 2 * one);
  }
  const CheckpointStats st = s.checkpoint_stats();
  EXPECT_EQ(st.count, 2u);
  EXPECT_EQ(st.evicted, 3u);
  // The two most recent (9 and 10) are kept: a cut to 9 restores without re-evaluation.
  s.memory_seq_rm(9);
  EXPECT_EQ(s.checkpoint_stats().replayed_tokens, 0u);
  EXPECT_EQ(s.checkpoint_stats().count, 1u);  // 10 is past the cut
}

// eval_token's pick is the argmax (top_k 0) or the k best (core/top_k.hpp) of the logits it
// returns, which are the same as without the pick; eval_prompt's is its last token's, with or
// without all_logits.
TEST_P(SessionStateTest, PickIsTheArgmaxOrTheTopKOfTheLogits) {
  ASSERT_GE(tokens_.size(), 12u);
  for (size_t k : {0, 1, 7}) {
    SCOPED_TRACE("top_k " + std::to_string(k));
    Session a(*engine_), b(*engine_);
    std::vector<TopEntry> want;
    auto expect_pick = [&](const LogitsPick& pick, const std::vector<float>& logits,
                           const std::string& what) {
      EXPECT_TRUE(pick.finite) << what;
      if (k == 0) {
        EXPECT_EQ(pick.id, int(argmax(logits))) << what;
        return;
      }
      top_k(logits, k, want);
      ASSERT_EQ(pick.best.size(), k) << what;
      for (size_t i = 0; i < k; ++i) {
        EXPECT_EQ(pick.best[i].id, want[i].id) << what << ", rank " << i;
        EXPECT_EQ(pick.best[i].value, want[i].value) << what << ", rank " << i;
      }
    };
    LogitsPick pick;
    pick.top_k = k;
    pick.id = -1;
    pick.finite = false;
    expect_identical(a.eval_prompt(ids(0, 6), nullptr, &pick), b.eval_prompt(ids(0, 6)), "prompt");
    expect_pick(pick, b.logits(), "prompt");
    for (size_t i = 6; i < 12; ++i) {
      pick.id = -1;
      pick.finite = false;
      pick.best.clear();
      expect_identical(a.eval_token(tokens_[i], &pick), b.eval_token(tokens_[i]), "decode");
      expect_pick(pick, b.logits(), "token " + std::to_string(i));
    }
    EXPECT_EQ(a.position(), b.position());
    EXPECT_EQ(a.tokens(), b.tokens());
    // With every position's logits the pick comes from the host's copy of the last row.
    Session c(*engine_);
    std::vector<float> all;
    pick.best.clear();
    pick.finite = false;
    c.eval_prompt(ids(0, 6), &all, &pick);
    expect_pick(pick, c.logits(), "prompt with all logits");
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SessionStateTest,
                         testing::Values("qwen3_moe_sharded", "qwen3_5_moe_text"));

}  // namespace
}  // namespace moeflux::test
