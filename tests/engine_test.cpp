// Engine and Session: many sessions on one engine (from several threads, and batched into one
// forward pass) give the logits each would give alone, share one expert cache, and a decode
// loop allocates nothing.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

#include "runtime/session.hpp"
#include "streaming_fixture.hpp"
#include "test_util.hpp"

// Counting replacements of the global allocation functions (for this test binary): while
// g_counting is set, every allocation is counted, on any thread. Not under a sanitizer, whose
// runtime replaces them itself (the allocation test is skipped there).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MOEFLUX_COUNT_ALLOCATIONS 0
#else
#define MOEFLUX_COUNT_ALLOCATIONS 1
#endif

namespace {
std::atomic<bool> g_counting{false};
std::atomic<size_t> g_allocations{0};

#if MOEFLUX_COUNT_ALLOCATIONS
void* counted_alloc(std::size_t n, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed))
    g_allocations.fetch_add(1, std::memory_order_relaxed);
  void* p =
      align <= alignof(std::max_align_t)
          ? std::malloc(n ? n : 1)
          : std::aligned_alloc(align, (std::max<std::size_t>(n, 1) + align - 1) / align * align);
  if (!p) throw std::bad_alloc();
  return p;
}
#endif
}  // namespace

#if MOEFLUX_COUNT_ALLOCATIONS
void* operator new(std::size_t n) {
  return counted_alloc(n, 0);
}
void* operator new[](std::size_t n) {
  return counted_alloc(n, 0);
}
void* operator new(std::size_t n, std::align_val_t a) {
  return counted_alloc(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return counted_alloc(n, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
#endif

namespace moeflux::test {
namespace {

class EngineTest : public StreamingFixture {
 protected:
  EngineOptions whole_cache() const {
    EngineOptions o;
    o.threads = 2;
    o.stream.ram_cache_bytes = all_experts_bytes();
    return o;
  }
  // Token by token logits of `tokens` on a session alone.
  std::vector<std::vector<float>> alone(const std::vector<int>& tokens) {
    Engine e(*model_, whole_cache());
    Session s(e);
    std::vector<std::vector<float>> out;
    for (int t : tokens) out.push_back(s.eval_token(t));
    return out;
  }
  std::vector<int> other_tokens() const {  // a second sequence: the tokens reversed
    return std::vector<int>(tokens_.rbegin(), tokens_.rend());
  }
};

TEST_P(EngineTest, TwoSessionsFromTwoThreadsMatchEachAloneAndShareTheCache) {
  const std::vector<int> a = tokens_, b = other_tokens();
  const auto want_a = alone(a), want_b = alone(b);
  Engine engine(*model_, whole_cache());
  std::vector<std::vector<float>> got_a, got_b;
  auto run = [&](const std::vector<int>& toks, std::vector<std::vector<float>>* out) {
    Session s(engine);
    for (int t : toks) out->push_back(s.eval_token(t));
  };
  std::thread ta(run, std::cref(a), &got_a), tb(run, std::cref(b), &got_b);
  ta.join();
  tb.join();
  ASSERT_EQ(got_a.size(), want_a.size());
  ASSERT_EQ(got_b.size(), want_b.size());
  for (size_t i = 0; i < a.size(); ++i) expect_identical(got_a[i], want_a[i], "session A");
  for (size_t i = 0; i < b.size(); ++i) expect_identical(got_b[i], want_b[i], "session B");
  // One cache for both: no record is read twice (the cache holds every expert), and the
  // second session found what the first had read.
  const ModelConfig& c = model_->config();
  const StreamStats& st = engine.streamer().stats();
  const LayerStreamStats tot = st.total();
  EXPECT_LE(st.storage_reads, uint64_t(c.num_experts) * c.num_moe_layers());
  EXPECT_GT(tot.cache_hits(), 0u);
  EXPECT_EQ(tot.requests, tot.cache_hits() + tot.misses + tot.prefetch_hits);
}

TEST_P(EngineTest, BatchedDecodeMatchesEachSessionAlone) {
  const std::vector<int> a = tokens_, b = other_tokens();
  std::vector<int> c(tokens_.size());
  for (size_t i = 0; i < c.size(); ++i) c[i] = tokens_[(i * 7) % tokens_.size()];
  const auto want_a = alone(a), want_b = alone(b), want_c = alone(c);
  Engine engine(*model_, whole_cache());
  Session sa(engine), sb(engine), sc(engine);
  Session* batch[3] = {&sa, &sb, &sc};
  for (size_t i = 0; i < a.size(); ++i) {
    const int toks[3] = {a[i], b[i], c[i]};
    eval_batch(batch, toks);
    expect_identical(sa.logits(), want_a[i], "batched session A");
    expect_identical(sb.logits(), want_b[i], "batched session B");
    expect_identical(sc.logits(), want_c[i], "batched session C");
  }
  EXPECT_EQ(sa.position(), int(a.size()));
  Session* twice[2] = {&sa, &sa};
  const int two[2] = {1, 2};
  EXPECT_THROW(eval_batch(twice, two), Error);
}

TEST_P(EngineTest, DecodeLoopAllocatesNothing) {
  if (!MOEFLUX_COUNT_ALLOCATIONS) GTEST_SKIP() << "allocations are not counted under a sanitizer";
  for (PrefetchMode pf : {PrefetchMode::None, PrefetchMode::Both}) {
    EngineOptions o = whole_cache();
    o.stream.prefetch = pf;
    o.context = tokens_.size() * 2;
    Engine engine(*model_, o);
    Session s(engine);
    // Warm-up: the first tokens read every expert they need and size every scratch buffer.
    for (int t : tokens_) s.eval_token(t);
    g_allocations = 0;
    g_counting = true;
    for (size_t i = 0; i < tokens_.size(); ++i) s.eval_token(tokens_[i]);
    g_counting = false;
    EXPECT_EQ(g_allocations.load(), 0u)
        << "heap allocations in " << tokens_.size() << " decoded tokens (prefetch "
        << prefetch_mode_name(pf) << ")";
  }
}

TEST_P(EngineTest, ContextIsPreallocatedAndEnforced) {
  EngineOptions o = whole_cache();
  o.context = 4;
  Engine engine(*model_, o);
  Session s(engine);
  EXPECT_EQ(s.context(), 4u);
  const std::vector<int> four(tokens_.begin(), tokens_.begin() + 4);
  s.eval_prompt(four);
  try {
    s.eval_token(tokens_[4]);
    FAIL() << "a token past --ctx was evaluated";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--ctx"), std::string::npos) << e.what();
  }
  o.context = size_t(model_->config().max_position_embeddings) + 1;
  EXPECT_THROW(Engine(*model_, o), Error);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineTest,
                         testing::Values("qwen3_moe_sharded", "qwen3_5_moe_text"));

}  // namespace
}  // namespace moeflux::test

namespace moeflux::test {
namespace {

TEST(GpuReadsMode, ParsesItsNames) {
  for (const GpuReads r : {GpuReads::Copy, GpuReads::InPlace, GpuReads::Auto})
    EXPECT_EQ(parse_gpu_reads(gpu_reads_name(r)), r);
  EXPECT_STREQ(gpu_reads_name(GpuReads::InPlace), "in-place");
  EXPECT_THROW(parse_gpu_reads("zero-copy"), Error);
}

// --gpu-reads auto reads in place only where there is something to gain (a GPU tier that keeps
// records, or a CPU share) and only on a machine whose kernels read host memory at
// kAutoInPlaceMinShare of the copy engine's rate or more; unmeasured rates mean copy.
TEST(GpuReadsMode, AutoReadsInPlaceWhereKernelsKeepUpWithTheCopyEngine) {
  const HostReadRates fast{50e9, 0.93 * 50e9}, slow{55e9, 0.63 * 55e9}, none{};
  const HostReadRates edge{40e9, kAutoInPlaceMinShare * 40e9};
  for (const bool keeps : {false, true})
    for (const bool cpu : {false, true}) {
      SCOPED_TRACE(std::string("keeps ") + (keeps ? "yes" : "no") + ", cpu " +
                   (cpu ? "yes" : "no"));
      EXPECT_EQ(auto_reads_in_place(keeps, cpu, fast), keeps || cpu);
      EXPECT_EQ(auto_reads_in_place(keeps, cpu, edge), keeps || cpu);
      EXPECT_FALSE(auto_reads_in_place(keeps, cpu, slow));
      EXPECT_FALSE(auto_reads_in_place(keeps, cpu, none));
    }
}

TEST(FamilyRegistry, EveryFamilyHasADefinitionAndLayerKindsAreChecked) {
  for (Family f : {Family::Qwen3Moe, Family::Qwen3_5Moe}) {
    const FamilyDef& d = family_def(f);
    EXPECT_EQ(d.family, f);
    EXPECT_NE(d.mixer, nullptr);
    EXPECT_FALSE(d.layer_kinds.empty());
    ModelConfig c;
    c.family = f;
    c.num_layers = 2;
    c.layer_kind = {LayerKind::FullAttention, LayerKind::FullAttention};
    EXPECT_NO_THROW(check_layer_kinds(c, "pkg"));
    const RouterSpec r = d.router(c, 3);
    EXPECT_EQ(r.top_k, 3);
  }
  ModelConfig c;
  c.family = Family::Qwen3Moe;
  c.num_layers = 2;
  c.layer_kind = {LayerKind::FullAttention, LayerKind::LinearAttention};
  try {
    check_layer_kinds(c, "pkg");
    FAIL() << "a linear-attention layer in a qwen3_moe model was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moeflux::test
