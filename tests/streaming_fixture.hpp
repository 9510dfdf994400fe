// A converted fixture package and its token ids (the prompt said twice, so that later tokens
// meet cached and prefetched experts), for tests of the streaming engine.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "experts/fault_injecting_reader.hpp"
#include "runtime/session.hpp"
#include "test_util.hpp"

namespace moeflux::test {

class StreamingFixture : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const CommandResult r =
        run_moeflux({"convert", fixture_dir(GetParam()) + "/hf", tmp_ / "pkg", "-q"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    model_ = Model::open(tmp_ / "pkg");
    tokens_ = fixture_tokens(GetParam());
    // Repeat the prompt so that later tokens meet cached and prefetched experts.
    const auto first = tokens_;
    tokens_.insert(tokens_.end(), first.begin(), first.end());
  }

  // Logits of every position: token by token (the decode path, where prefetch runs) or chunked.
  std::vector<float> logits(EngineOptions o, size_t chunk) {
    o.threads = 2;
    o.prefill_chunk = chunk;
    Session s(*model_, o);
    std::vector<float> all;
    s.eval_prompt(tokens_, &all);
    const LayerStreamStats t = s.streamer().stats().total();
    last_stream_ = s.streamer().stats();
    EXPECT_EQ(t.requests, t.cache_hits() + t.prefetch_hits + t.misses);
    if (o.stream.ram_cache_bytes == 0 && o.stream.upper_tiers.empty() && o.gpu_cache_bytes == 0 &&
        o.gpu_cache_percent == 0 && o.stream.prefetch == PrefetchMode::None) {
      EXPECT_EQ(t.cache_hits(), 0u) << "no cache, yet cache hits";
    }
    return all;
  }

  StreamStats last_stream_;  // of the last logits() call

  size_t all_experts_bytes() const {
    const auto& m = model_->package().manifest();
    return m.experts.record_bytes * model_->config().num_experts *
           model_->config().num_moe_layers();
  }

  // Decodes a token cleanly, then makes every read of the last MoE layer fail with `message`:
  // the next token must fail with that message, and after clear() the session must give the
  // clean logits again.
  void expect_read_failure_surfaces_and_recovers(EngineOptions o, const std::string& message) {
    FaultInjectingReader* faults = nullptr;
    o.threads = 2;
    o.prefill_chunk = 1;
    o.stream.reader_factory = [&](const Package& pkg, const ReaderOptions& ro) {
      auto r = std::make_unique<FaultInjectingReader>(make_expert_reader(pkg, ro));
      faults = r.get();
      return r;
    };
    Session s(*model_, o);
    const std::vector<float> clean_first = std::vector<float>(s.eval_token(tokens_[0]));
    ASSERT_NE(faults, nullptr);
    faults->fail_record(last_moe_layer(), -1, InjectedFault{InjectedFault::Fail, message, 0});
    try {
      s.eval_token(tokens_[1]);
      FAIL() << "a failed expert read did not surface";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
    faults->clear();
    s.clear();
    const std::vector<float>& again = s.eval_token(tokens_[0]);
    ASSERT_EQ(clean_first.size(), again.size());
    EXPECT_EQ(std::memcmp(clean_first.data(), again.data(), again.size() * sizeof(float)), 0)
        << "logits changed after a read failure and clear()";
  }

  int last_moe_layer() const {
    int l = 0;
    for (int i = 0; i < model_->config().num_layers; ++i)
      if (model_->config().layer_is_moe[i]) l = i;
    return l;
  }

  TempDir tmp_;
  std::unique_ptr<Model> model_;
  std::vector<int> tokens_;
};

inline void expect_identical(const std::vector<float>& a, const std::vector<float>& b,
                             const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
      << what << " changed the logits";
}

}  // namespace moeflux::test
