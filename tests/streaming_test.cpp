// The streaming engine must not change results: logits are bit-identical whatever the RAM cache
// budget, eviction policy, hot set, prefetch mode, I/O mode and backend. Read failures surface
// as errors from the evaluation call and leave the session usable after clear().
#include <gtest/gtest.h>

#include <cstring>

#include "core/error.hpp"
#include "experts/fault_injecting_reader.hpp"
#include "runtime/session.hpp"
#include "streaming_fixture.hpp"

namespace moeflux::test {
namespace {

using Streaming = StreamingFixture;

TEST_P(Streaming, ResultsDoNotDependOnCachingOrPrefetch) {
  const size_t rec = model_->package().manifest().experts.record_bytes;
  for (size_t chunk : {size_t{1}, size_t{256}}) {
    EngineOptions base;  // no cache, no prefetch, threads backend, page cache
    const std::vector<float> ref = logits(base, chunk);
    for (size_t budget : {rec, 5 * rec, all_experts_bytes()}) {
      for (const char* policy : {"lru", "slru", "lfu"}) {
        EngineOptions o;
        o.stream.ram_cache_bytes = budget;
        o.stream.policy = policy;
        expect_identical(ref, logits(o, chunk),
                         std::string("cache ") + std::to_string(budget) + " " + policy);
      }
    }
    EngineOptions hot;
    hot.stream.ram_cache_bytes = 8 * rec;
    hot.stream.hot_per_layer = 2;
    expect_identical(ref, logits(hot, chunk), "hot set");
    for (auto mode : {PrefetchMode::Temporal, PrefetchMode::Lookahead, PrefetchMode::Both}) {
      for (size_t budget : {size_t{0}, 6 * rec}) {
        EngineOptions o;
        o.stream.prefetch = mode;
        o.stream.ram_cache_bytes = budget;
        expect_identical(ref, logits(o, chunk),
                         std::string("prefetch ") + prefetch_mode_name(mode));
      }
    }
    for (auto backend : {IoBackend::Threads, IoBackend::IoUring}) {
      for (auto mode : {IoMode::PageCache, IoMode::Direct}) {
        EngineOptions o;
        o.stream.io.backend = backend;
        o.stream.io.mode = mode;
        o.stream.prefetch = PrefetchMode::Both;
        try {
          expect_identical(ref, logits(o, chunk),
                           std::string(io_backend_name(backend)) + " " + io_mode_name(mode));
        } catch (const Error& e) {
          // Only an environment that refuses the mode may skip it, and it says why.
          const std::string why = e.what();
          ASSERT_TRUE(why.find("O_DIRECT not supported") != std::string::npos ||
                      why.find("io_uring unavailable") != std::string::npos)
              << why;
          std::printf("[streaming] %s %s skipped here: %s\n", io_backend_name(backend),
                      io_mode_name(mode), e.what());
        }
      }
    }
  }
}

// Passes reads through, noting the order in which they were submitted.
class RecordingReader final : public ExpertReader {
 public:
  explicit RecordingReader(std::unique_ptr<ExpertReader> inner) : inner_(std::move(inner)) {
    record_bytes_ = inner_->record_bytes();
  }
  void submit(std::span<ReadOp* const> ops) override {
    for (const ReadOp* op : ops) order.emplace_back(op->layer, op->expert);
    inner_->submit(ops);
  }
  void wait(ReadOp& op) override { inner_->wait(op); }
  const char* describe() const override { return inner_->describe(); }
  ReaderStats stats() const override { return inner_->stats(); }
  std::vector<std::pair<int, int>> order;

 private:
  std::unique_ptr<ExpertReader> inner_;
};

TEST_P(Streaming, DeferredPrefetchQueuesBehindTheDemandReads) {
  std::vector<int> moe;
  for (int l = 0; l < model_->config().num_layers; ++l)
    if (model_->config().layer_is_moe[l]) moe.push_back(l);
  ASSERT_GE(moe.size(), 2u);
  RecordingReader* rec = nullptr;
  StreamOptions o;
  o.max_active = 2;
  o.reader_factory = [&](const Package& pkg, const ReaderOptions& ro) {
    auto r = std::make_unique<RecordingReader>(make_expert_reader(pkg, ro));
    rec = r.get();
    return r;
  };
  ExpertStreamer st(model_->package(), o);
  const int next[2] = {2, 3}, now[2] = {0, 1};
  st.prefetch_after_next_demand(moe[1], next, PrefetchKind::Lookahead);
  ASSERT_TRUE(rec->order.empty()) << "a deferred prefetch was issued at once";
  std::vector<const uint8_t*> out;
  st.acquire(moe[0], now, out);
  st.release();
  const std::vector<std::pair<int, int>> expected = {
      {moe[0], 0}, {moe[0], 1}, {moe[1], 2}, {moe[1], 3}};
  EXPECT_EQ(rec->order, expected);
  st.acquire(moe[1], next, out);
  st.release();
  EXPECT_EQ(st.stats().total().prefetch_hits, 2u);
  EXPECT_EQ(st.stats().prefetch[static_cast<int>(PrefetchKind::Lookahead)].correct, 2u);
  EXPECT_EQ(rec->order.size(), 4u) << "prefetched records were read again";
}

TEST_P(Streaming, PrefetchAndCacheCountersMakeSense) {
  EngineOptions o;
  o.stream.prefetch = PrefetchMode::Both;
  o.stream.ram_cache_bytes = all_experts_bytes();
  o.prefill_chunk = 1;
  Session s(*model_, o);
  s.eval_prompt(tokens_);
  const StreamStats& st = s.streamer().stats();
  const LayerStreamStats t = st.total();
  const size_t moe_layers = model_->config().num_moe_layers();
  EXPECT_EQ(t.requests, tokens_.size() * moe_layers * model_->config().top_k);
  EXPECT_GT(t.cache_hits() + t.prefetch_hits, 0u);  // the prompt repeats: experts come back
  // Everything fits: each expert is read from storage at most once.
  EXPECT_LE(st.storage_reads, static_cast<uint64_t>(model_->config().num_experts) * moe_layers);
  for (const auto& p : st.prefetch) {
    EXPECT_LE(p.correct, p.predictions);
    EXPECT_LE(p.wasted_reads, p.reads);
  }
  EXPECT_GT(st.prefetch[static_cast<int>(PrefetchKind::Temporal)].predictions, 0u);
  EXPECT_GT(st.prefetch[static_cast<int>(PrefetchKind::Lookahead)].predictions, 0u);
}

TEST_P(Streaming, ReadFailureMidTokenIsAnErrorAndTheSessionRecovers) {
  EngineOptions o;
  o.stream.prefetch = PrefetchMode::Both;
  o.stream.ram_cache_bytes = 4 * model_->package().manifest().experts.record_bytes;
  expect_read_failure_surfaces_and_recovers(o, "disk on fire");
}

TEST_P(Streaming, ShortReadIsAnError) {
  FaultInjectingReader* faults = nullptr;
  EngineOptions o;
  o.stream.reader_factory = [&](const Package& pkg, const ReaderOptions& ro) {
    auto r = std::make_unique<FaultInjectingReader>(make_expert_reader(pkg, ro));
    faults = r.get();
    return r;
  };
  Session s(*model_, o);
  faults->fail_nth(2, InjectedFault{InjectedFault::Truncate, "", 100});
  EXPECT_THROW(s.eval_token(tokens_[0]), Error);
}

TEST_P(Streaming, LayerFileTruncatedAfterOpen) {
  Session s(*model_, EngineOptions{});
  s.eval_token(tokens_[0]);
  for (const auto& e : fs::directory_iterator(tmp_ / "pkg/experts"))
    fs::resize_file(e.path(), 4096);
  s.clear();
  try {
    s.eval_token(tokens_[3]);
    FAIL() << "truncated layer file not detected";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("layer_"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Streaming,
                         testing::Values("qwen3_moe_sharded", "qwen3_5_moe_vl"));

}  // namespace
}  // namespace moeflux::test
