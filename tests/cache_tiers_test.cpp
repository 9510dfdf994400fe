// The cache hierarchy: tiers above the RAM cache (the GPU tier's place) with their own budgets
// and policies. Results are bit-identical whatever the tiers; records are promoted into the
// faster tiers and served from the fastest that holds them; asynchronous copies are fenced
// before compute; only the fastest tier may be non-host memory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "experts/fault_injecting_reader.hpp"
#include "streaming_fixture.hpp"

namespace moeflux::test {
namespace {

using CacheTiers = StreamingFixture;

// Host memory whose copies land only at fence() (like a GPU's async host->device copies), and
// whose slots start poisoned, so that a missing fence or a stale slot changes the logits.
class DeferredCopyMemory final : public TierMemory {
 public:
  DeferredCopyMemory(size_t slots, size_t record_bytes, bool host_accessible = true)
      : arena_(slots * record_bytes, 4096), record_bytes_(record_bytes), host_(host_accessible) {
    std::memset(arena_.data(), 0xff, arena_.size());  // NaN in every float format
  }
  uint8_t* slot_data(size_t slot) override { return arena_.data() + slot * record_bytes_; }
  // Returns null although the copy has not landed: a host-accessible fastest tier's records are
  // handed out after a fence (the CPU computes from them directly).
  const void* copy_in(uint8_t* dst, const uint8_t* src, size_t bytes) override {
    std::memset(dst, 0xff, bytes);  // the old contents are gone; the new ones not yet there
    queued_.push_back({dst, src, bytes});
    return nullptr;
  }
  void fence() override {
    for (const Copy& c : queued_) std::memcpy(c.dst, c.src, c.bytes);
    fences += queued_.empty() ? 0 : 1;
    queued_.clear();
  }
  bool host_accessible() const override { return host_; }
  const char* kind() const override { return "test-deferred"; }
  size_t fences = 0;

 private:
  struct Copy {
    uint8_t* dst;
    const uint8_t* src;
    size_t bytes;
  };
  AlignedBuffer arena_;
  size_t record_bytes_;
  bool host_;
  std::vector<Copy> queued_;
};

TierSpec host_tier(const char* name, size_t budget, const char* policy = "lfu") {
  TierSpec t;
  t.name = name;
  t.budget_bytes = budget;
  t.policy = policy;
  return t;
}

TierSpec deferred_tier(const char* name, size_t budget) {
  TierSpec t = host_tier(name, budget);
  t.make_memory = [](size_t slots, size_t record_bytes) {
    return std::make_unique<DeferredCopyMemory>(slots, record_bytes);
  };
  return t;
}

// Whether `record` lies in one of the RAM tier's slots.
bool lies_in_ram(const ExpertStreamer& st, const uint8_t* record) {
  for (const auto& slot : st.tier(st.ram_tier()).slots())
    if (slot->data == record) return true;
  return false;
}

TEST_P(CacheTiers, ResultsDoNotDependOnTiers) {
  const size_t rec = model_->package().manifest().experts.record_bytes;
  for (size_t chunk : {size_t{1}, size_t{256}}) {
    const std::vector<float> ref = logits(EngineOptions{}, chunk);
    struct Case {
      const char* what;
      std::vector<TierSpec> upper;
      size_t ram;
      PrefetchMode prefetch;
      size_t prefetch_copies = 0;  // copied up from the first prediction on
    };
    const std::vector<Case> cases = {
        {"fast 0 over ram 0", {host_tier("fast", 0)}, 0, PrefetchMode::None},
        {"fast 1 over ram 0", {host_tier("fast", rec)}, 0, PrefetchMode::None},
        {"fast 5 lru over ram 3", {host_tier("fast", 5 * rec, "lru")}, 3 * rec, PrefetchMode::None},
        {"fast all over ram 0", {host_tier("fast", all_experts_bytes())}, 0, PrefetchMode::None},
        {"fast 2 over ram all",
         {host_tier("fast", 2 * rec)},
         all_experts_bytes(),
         PrefetchMode::None},
        {"fast 2 over mid 6 over ram 4",
         {host_tier("fast", 2 * rec), host_tier("mid", 6 * rec, "slru")},
         4 * rec,
         PrefetchMode::None},
        {"fast 3 over ram 6, prefetch both",
         {host_tier("fast", 3 * rec)},
         6 * rec,
         PrefetchMode::Both},
        {"fast 0 over ram 0, prefetch temporal", {host_tier("fast", 0)}, 0, PrefetchMode::Temporal},
        {"deferred 4 over ram 2, prefetch lookahead",
         {deferred_tier("gpu-like", 4 * rec)},
         2 * rec,
         PrefetchMode::Lookahead},
        {"deferred 0 over ram 0", {deferred_tier("gpu-like", 0)}, 0, PrefetchMode::None},
        {"deferred 3 over ram 4, prefetch both, copies",
         {deferred_tier("gpu-like", 3 * rec)},
         4 * rec,
         PrefetchMode::Both,
         3},
        {"fast 2 over deferred mid 6 over ram 2, prefetch both",
         {host_tier("fast", 2 * rec), deferred_tier("mid", 6 * rec)},
         2 * rec,
         PrefetchMode::Both},
    };
    for (const Case& c : cases) {
      EngineOptions o;
      o.stream.upper_tiers = c.upper;
      o.stream.ram_cache_bytes = c.ram;
      o.stream.prefetch = c.prefetch;
      o.stream.prefetch_copies = c.prefetch_copies;
      o.stream.prefetch_copy_after = 0;
      expect_identical(ref, logits(o, chunk), c.what);
      if (c.prefetch_copies > 0 && chunk == 1) {  // (prompt chunks do not prefetch)
        EXPECT_GT(last_stream_.prefetch[0].copies + last_stream_.prefetch[1].copies, 0u)
            << c.what << ": no guess was copied up";
      }
    }
    EngineOptions hot;
    hot.stream.upper_tiers = {host_tier("fast", 4 * rec)};
    hot.stream.ram_cache_bytes = 8 * rec;
    hot.stream.hot_per_layer = 2;
    expect_identical(ref, logits(hot, chunk), "hot set with an upper tier");
  }
}

TEST_P(CacheTiers, RecordsArePromotedAndServedFromTheFastestTier) {
  const size_t rec = model_->package().manifest().experts.record_bytes;
  const ModelConfig& c = model_->config();
  const uint64_t distinct_max = static_cast<uint64_t>(c.num_experts) * c.num_moe_layers();
  EngineOptions o;
  o.threads = 2;
  o.prefill_chunk = 1;
  // A fast tier of 2 records over a RAM tier that holds everything: the fast tier churns,
  // the RAM tier serves what it lost, storage is read once per expert.
  o.stream.upper_tiers = {host_tier("fast", 2 * rec)};
  o.stream.ram_cache_bytes = all_experts_bytes();
  Session s(*model_, o);
  s.eval_prompt(tokens_);
  const StreamStats& st = s.streamer().stats();
  const LayerStreamStats t = st.total();
  ASSERT_EQ(s.streamer().tier_count(), 2u);
  EXPECT_EQ(s.streamer().tier(0).name(), "fast");
  EXPECT_EQ(s.streamer().tier(1).name(), "ram");
  EXPECT_EQ(t.requests, t.tier_hits[0] + t.tier_hits[1] + t.prefetch_hits + t.misses);
  EXPECT_GT(t.tier_hits[0], 0u) << "the fast tier never served a request";
  EXPECT_GT(t.tier_hits[1], 0u) << "records evicted from the fast tier were not found in RAM";
  EXPECT_GT(st.tiers[0].evictions, 0u);
  EXPECT_EQ(st.tiers[1].evictions, 0u);
  EXPECT_LE(st.storage_reads, distinct_max);
  EXPECT_EQ(st.storage_reads, t.misses);
  // Every request not served by the fast tier was promoted into it.
  EXPECT_EQ(st.tiers[0].fills, t.requests - t.tier_hits[0]);
  EXPECT_EQ(st.tiers[1].fills, st.storage_reads);
  EXPECT_EQ(st.tiers[0].hits, t.tier_hits[0]);
}

TEST_P(CacheTiers, IntermediateTiersAreFilledOnTheWayUp) {
  const size_t rec = model_->package().manifest().experts.record_bytes;
  EngineOptions o;
  o.threads = 2;
  o.prefill_chunk = 1;
  o.stream.upper_tiers = {host_tier("fast", rec), host_tier("mid", all_experts_bytes())};
  o.stream.ram_cache_bytes = 0;
  Session s(*model_, o);
  s.eval_prompt(tokens_);
  const StreamStats& st = s.streamer().stats();
  const LayerStreamStats t = st.total();
  // Without a RAM budget, the middle tier is what keeps records: the repeated prompt finds them.
  EXPECT_GT(t.tier_hits[1], 0u);
  EXPECT_EQ(t.tier_hits[2], 0u);
  EXPECT_EQ(st.tiers[1].fills, t.misses);  // each storage read was copied into the middle tier
  EXPECT_EQ(st.tiers[1].evictions, 0u);
}

TEST_P(CacheTiers, AsynchronousCopiesAreFencedBeforeCompute) {
  const size_t rec = model_->package().manifest().experts.record_bytes;
  DeferredCopyMemory* mem = nullptr;
  EngineOptions o;
  o.threads = 2;
  TierSpec t = host_tier("gpu-like", 2 * rec);
  t.make_memory = [&](size_t slots, size_t record_bytes) {
    auto m = std::make_unique<DeferredCopyMemory>(slots, record_bytes);
    mem = m.get();
    return m;
  };
  o.stream.upper_tiers = {t};
  const std::vector<float> ref = logits(EngineOptions{}, 1);
  EXPECT_EQ(std::memcmp(ref.data(), logits(o, 1).data(), ref.size() * sizeof(float)), 0);
  Session s(*model_, o);
  s.eval_token(tokens_[0]);
  ASSERT_NE(mem, nullptr);
  EXPECT_GT(mem->fences, 0u);
}

// Hybrid compute asks for some records to be left in the RAM tier: they are handed out there,
// whole, flagged on_host and counted, and the faster tier receives no copy of them; the others
// are promoted as usual.
TEST_P(CacheTiers, RecordsForTheCpuStayInTheRamTier) {
  int layer = 0;
  while (!model_->config().layer_is_moe[layer]) ++layer;
  StreamOptions o;
  o.max_active = 2;
  o.ram_cache_bytes = all_experts_bytes();
  o.upper_tiers = {host_tier("gpu-like", 0)};  // working slots only: keeps nothing
  ExpertStreamer st(model_->package(), o);
  const int experts[2] = {0, 1};
  std::vector<const uint8_t*> out;
  st.acquire(layer, experts, out);
  const size_t rb = st.record_bytes();
  const std::vector<uint8_t> first(out[0], out[0] + rb), second(out[1], out[1] + rb);
  st.release();
  EXPECT_EQ(st.tier_of(layer, 0), int(st.ram_tier()));
  EXPECT_EQ(st.tier_of(layer, 5), -1);
  const uint64_t fills = st.stats().tiers[0].fills;

  const Placement on_host[2] = {Placement::Host, Placement::Promote};
  const int ticket = st.request(layer, experts, on_host);
  std::vector<ExpertHandle> ready, all;
  while (st.take_ready(ticket, ready)) all.insert(all.end(), ready.begin(), ready.end());
  ASSERT_EQ(all.size(), 2u);
  for (const ExpertHandle& h : all) {
    EXPECT_EQ(h.on_host, h.index == 0);
    EXPECT_EQ(h.ready, nullptr);
    EXPECT_EQ(std::memcmp(h.record, h.index == 0 ? first.data() : second.data(), rb), 0);
    // Left in the RAM tier: the record lies in one of its slots.
    EXPECT_EQ(lies_in_ram(st, h.record), h.on_host);
  }
  st.release(ticket);
  EXPECT_EQ(st.stats().tiers[0].fills, fills + 1);  // only the second was promoted
  EXPECT_EQ(st.stats().total().host_computed, 1u);
}

// Device-like memory whose copies land in windows, as a GPU tier's do: a window's copies land
// when landed() is polled (or, with lands_when_polled false, only at fence()). At landing each
// copy checks that its source still holds what it held when the copy was issued: a source
// reused before its window landed is counted in sources_changed.
class WindowedCopyMemory final : public TierMemory {
 public:
  WindowedCopyMemory(size_t slots, size_t record_bytes, bool lands_when_polled)
      : arena_(slots * record_bytes, 4096),
        record_bytes_(record_bytes),
        polled_(lands_when_polled) {}
  uint8_t* slot_data(size_t slot) override { return arena_.data() + slot * record_bytes_; }
  const void* copy_in(uint8_t* dst, const uint8_t* src, size_t bytes) override {
    queued_.push_back({dst, src, std::vector<uint8_t>(src, src + bytes), closed_ + 1});
    open_ = true;
    return &queued_;  // any non-null readiness: the copy is asynchronous
  }
  uint64_t close_window() override {
    if (!open_) return 0;
    open_ = false;
    return ++closed_;
  }
  // A window of no copies standing for the compute issued so far, which reads the records
  // registered by reads_in_place(): at landing each must still hold what it held then.
  void open_reads() override { ++reads_opened; }
  uint64_t close_reads(double bytes) override {
    close_window();
    for (Read& r : reads_)
      if (r.window == 0) r.window = closed_ + 1;
    read_windows_.push_back({closed_ + 1, bytes});
    return ++closed_;
  }
  void reads_in_place(const uint8_t* record, size_t bytes) {
    reads_.push_back({record, std::vector<uint8_t>(record, record + bytes), 0});
  }
  bool landed(uint64_t id) override {
    if (polled_) land_through(id);
    return landed_ >= id;
  }
  void fence() override {
    close_window();
    ++fences;
    land_through(closed_);
  }
  Transferred take_transferred() override { return std::exchange(transferred_, Transferred{}); }
  bool host_accessible() const override { return false; }
  const char* kind() const override { return "test-windowed"; }
  bool window_open() const { return open_; }
  size_t fences = 0, sources_changed = 0, reads_changed = 0, reads_landed = 0, reads_opened = 0;

 private:
  struct Copy {
    uint8_t* dst;
    const uint8_t* src;
    std::vector<uint8_t> issued;  // the source's bytes when the copy was issued
    uint64_t window;
  };
  void land_through(uint64_t id) {
    size_t n = 0;
    for (; n < queued_.size() && queued_[n].window <= id; ++n) {
      const Copy& c = queued_[n];
      if (std::memcmp(c.src, c.issued.data(), c.issued.size()) != 0) ++sources_changed;
      std::memcpy(c.dst, c.src, c.issued.size());
      transferred_.bytes += double(c.issued.size());
      transferred_.seconds += 1e-6;
    }
    queued_.erase(queued_.begin(), queued_.begin() + static_cast<std::ptrdiff_t>(n));
    std::erase_if(read_windows_, [&](const std::pair<uint64_t, double>& w) {
      if (w.first > id) return false;
      transferred_.read_bytes += w.second;
      transferred_.read_seconds += 1e-6;
      return true;
    });
    std::erase_if(reads_, [&](const Read& r) {
      if (r.window == 0 || r.window > id) return false;
      if (std::memcmp(r.record, r.seen.data(), r.seen.size()) != 0) ++reads_changed;
      ++reads_landed;
      return true;
    });
    landed_ = std::max(landed_, id);
  }
  struct Read {
    const uint8_t* record;
    std::vector<uint8_t> seen;  // its bytes when handed out
    uint64_t window;            // of close_reads(); 0: not closed yet
  };
  std::vector<Read> reads_;
  std::vector<std::pair<uint64_t, double>> read_windows_;  // (close_reads' window, its bytes)
  AlignedBuffer arena_;
  size_t record_bytes_;
  bool polled_;
  std::vector<Copy> queued_;
  uint64_t closed_ = 0, landed_ = 0;
  bool open_ = false;
  Transferred transferred_;
};

// Host memory that says the device can read it in place (as the CUDA backend's mapped,
// page-locked RAM tier).
class DeviceReadableMemory final : public TierMemory {
 public:
  DeviceReadableMemory(size_t slots, size_t record_bytes)
      : arena_(slots * record_bytes, 4096), record_bytes_(record_bytes) {}
  uint8_t* slot_data(size_t slot) override { return arena_.data() + slot * record_bytes_; }
  const void* copy_in(uint8_t* dst, const uint8_t* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return nullptr;
  }
  void fence() override {}
  bool host_accessible() const override { return true; }
  bool device_readable() const override { return true; }
  const char* kind() const override { return "test-mapped"; }

 private:
  AlignedBuffer arena_;
  size_t record_bytes_;
};

// A streamer over a RAM tier of working slots only (a released slot is read into next) and a
// device-like tier of working slots (WindowedCopyMemory, landing when polled or only at
// fence()), the RAM tier device-readable or not.
struct WorkingSlotsStreamer {
  WindowedCopyMemory* mem = nullptr;
  std::unique_ptr<ExpertStreamer> st;

  WorkingSlotsStreamer(const Package& pkg, bool polled, bool device_readable_ram) {
    StreamOptions o;
    o.max_active = 2;
    o.ram_cache_bytes = 0;
    if (device_readable_ram)
      o.ram_memory = [](size_t slots, size_t record_bytes) {
        return std::make_unique<DeviceReadableMemory>(slots, record_bytes);
      };
    TierSpec t = host_tier("gpu-like", 0);  // keeps nothing: admits nothing
    t.make_memory = [this, polled](size_t slots, size_t record_bytes) {
      auto m = std::make_unique<WindowedCopyMemory>(slots, record_bytes, polled);
      mem = m.get();
      return m;
    };
    o.upper_tiers = {t};
    st = std::make_unique<ExpertStreamer>(pkg, o);
  }
  // Every expert of `layer` in pairs, twice over, each pair asked `as` and released once its
  // handles have been seen by `check(handle, expert)`. Then the waits: with landings polled the
  // loop never fenced; else the RAM tier ran out of slots, and something was fenced.
  void stream_pairs(int layer, int experts, Placement as, bool polled,
                    const std::function<void(const ExpertHandle&, int)>& check) {
    std::vector<ExpertHandle> ready;
    size_t handed = 0;
    const Placement placement[2] = {as, as};
    for (int round = 0; round < 2; ++round)
      for (int e = 0; e + 1 < experts; e += 2) {
        const int pair[2] = {e, e + 1};
        const int ticket = st->request(layer, pair, placement);
        while (st->take_ready(ticket, ready)) {
          // The copies just issued are a closed window already: its device time ends with
          // them, not with release() after whatever the host does meanwhile.
          EXPECT_FALSE(mem->window_open()) << "take_ready left its copies' window open";
          for (const ExpertHandle& h : ready) {
            check(h, pair[h.index]);
            ++handed;
          }
        }
        st->release(ticket);
      }
    EXPECT_EQ(handed, size_t(experts / 2 * 2 * 2));
    if (polled)
      EXPECT_EQ(mem->fences, 0u) << "the decode loop waited for copies or compute";
    else
      EXPECT_GT(mem->fences, 0u) << "the RAM tier ran out of slots, yet nothing waited";
    st->release();  // fences the rest
  }
};

// release() does not wait for the copies into a device-like tier (take_ready closes their
// window, so that it times the copies alone): their sources stay pinned until the window lands
// — polled by the next request, or, when the RAM tier has no other slot to give, waited for. Either
// way no source is overwritten (by a storage read into a reused RAM slot) before its copy has
// landed, and every copied byte is counted once landed.
TEST_P(CacheTiers, CopySourcesStayPinnedUntilTheirCopiesLand) {
  int layer = 0;
  while (!model_->config().layer_is_moe[layer]) ++layer;
  const int experts = model_->config().num_experts;
  for (const bool polled : {true, false}) {
    SCOPED_TRACE(polled ? "copies land when polled" : "copies land only at a fence");
    WorkingSlotsStreamer w(model_->package(), polled, /*device_readable_ram=*/false);
    ASSERT_NE(w.mem, nullptr);
    w.stream_pairs(layer, experts, Placement::Promote, polled, [](const ExpertHandle& h, int) {
      EXPECT_NE(h.ready, nullptr);  // promoted by an asynchronous copy
    });
    EXPECT_EQ(w.mem->sources_changed, 0u) << "a copy's source was reused before it landed";
    const TierStats& gpu = w.st->stats().tiers.front();
    EXPECT_EQ(gpu.transfer_bytes, double(gpu.copied_bytes));
    EXPECT_GT(gpu.transfer_seconds, 0.0);
  }
}

// Records asked to be read in place (Placement::InPlace) from a device-readable RAM tier are
// handed out where they lie — whole, no copy, flagged in_place — when the fastest tier keeps
// nothing; their RAM slots stay pinned until the compute issued before release() has finished
// (close_reads' window landed: polled, or waited for when the RAM tier has no other slot), so
// that no storage read overwrites a record the device may still be reading.
TEST_P(CacheTiers, RecordsReadInPlaceStayPinnedUntilComputeHasRead) {
  int layer = 0;
  while (!model_->config().layer_is_moe[layer]) ++layer;
  const int experts = model_->config().num_experts;
  std::vector<std::vector<uint8_t>> expected(experts);
  {
    StreamOptions plain;
    plain.max_active = 2;
    ExpertStreamer st(model_->package(), plain);
    for (int e = 0; e < experts; ++e) {
      std::vector<const uint8_t*> out;
      const int one[1] = {e};
      st.acquire(layer, one, out);
      expected[e].assign(out[0], out[0] + st.record_bytes());
      st.release();
    }
  }
  for (const bool polled : {true, false}) {
    SCOPED_TRACE(polled ? "reads land when polled" : "reads land only at a fence");
    WorkingSlotsStreamer w(model_->package(), polled, /*device_readable_ram=*/true);
    ASSERT_NE(w.mem, nullptr);
    ASSERT_TRUE(w.st->reads_in_place());
    size_t handed = 0;
    w.stream_pairs(layer, experts, Placement::InPlace, polled, [&](const ExpertHandle& h, int e) {
      EXPECT_TRUE(h.in_place);
      EXPECT_FALSE(h.on_host);
      EXPECT_EQ(h.ready, nullptr);
      EXPECT_TRUE(lies_in_ram(*w.st, h.record)) << "an in-place record is not in the RAM tier";
      EXPECT_EQ(std::memcmp(h.record, expected[e].data(), expected[e].size()), 0);
      w.mem->reads_in_place(h.record, expected[e].size());
      ++handed;
    });
    EXPECT_EQ(w.mem->reads_landed, handed);
    EXPECT_EQ(w.mem->reads_changed, 0u) << "a record read in place was overwritten first";
    EXPECT_EQ(w.st->stats().tiers[0].fills, 0u) << "a record read in place was also copied";
    EXPECT_EQ(w.st->stats().total().read_in_place, handed);
    // Each pair's reads opened once and timed once landed, every byte counted once.
    EXPECT_EQ(w.mem->reads_opened, size_t(experts / 2 * 2));
    EXPECT_EQ(w.st->stats().tiers[0].read_bytes, double(handed * w.st->record_bytes()));
    EXPECT_GT(w.st->stats().tiers[0].read_seconds, 0.0);
  }
}

// Streaming options with a GPU-like fastest tier (windowed copies) keeping 2 records besides its
// 6 working slots (K = 2), over a RAM tier holding every expert.
StreamOptions two_kept_gpu_like(const Package& pkg, size_t ram_bytes) {
  StreamOptions o;
  o.max_active = 2;
  o.ram_cache_bytes = ram_bytes;
  TierSpec t = host_tier("gpu-like", 0);
  t.make_memory = [](size_t slots, size_t record_bytes) {
    return std::make_unique<WindowedCopyMemory>(slots, record_bytes, true);
  };
  t.budget_bytes = 2 * pkg.manifest().experts.record_bytes;
  o.upper_tiers = {t};
  return o;
}

// A record to be read in place is promoted instead when the fastest tier admits it: while it
// has a free slot, or once the record has been used more often than the tier's eviction victim.
// Promote always promotes; without a device-readable tier InPlace means Promote.
TEST_P(CacheTiers, TheFastestTierAdmitsRecordsUsedMoreThanItsVictim) {
  int layer = 0;
  while (!model_->config().layer_is_moe[layer]) ++layer;
  ASSERT_GE(model_->config().num_experts, 10);
  for (const bool mapped : {true, false}) {
    SCOPED_TRACE(mapped ? "device-readable RAM tier" : "plain RAM tier");
    StreamOptions o = two_kept_gpu_like(model_->package(), all_experts_bytes());
    if (mapped)
      o.ram_memory = [](size_t slots, size_t record_bytes) {
        return std::make_unique<DeviceReadableMemory>(slots, record_bytes);
      };
    ExpertStreamer st(model_->package(), o);
    EXPECT_EQ(st.reads_in_place(), mapped);
    const size_t slots = st.tier(0).total_slots();
    ASSERT_EQ(slots, 8u);
    // Hands out expert e alone; returns whether it was read in place.
    auto use = [&](int e, Placement p) {
      const int one[1] = {e};
      const int ticket = st.request(layer, one, std::span<const Placement>(&p, 1));
      std::vector<ExpertHandle> ready, all;
      while (st.take_ready(ticket, ready)) all.insert(all.end(), ready.begin(), ready.end());
      st.release(ticket);
      EXPECT_EQ(all.size(), 1u);
      return !all.empty() && all[0].in_place;
    };
    const uint64_t fills0 = st.stats().tiers[0].fills;
    for (int e = 0; e < int(slots); ++e) EXPECT_FALSE(use(e, Placement::InPlace)) << e;
    EXPECT_EQ(st.stats().tiers[0].fills, fills0 + slots) << "free slots take what comes";
    // Full: a record used once is read where it lies, ...
    EXPECT_EQ(use(int(slots), Placement::InPlace), mapped);
    EXPECT_EQ(st.tier_of(layer, int(slots)), mapped ? int(st.ram_tier()) : 0);
    // ... used a second time it beats a victim used once and moves up ...
    if (mapped) {
      EXPECT_FALSE(use(int(slots), Placement::InPlace));
      EXPECT_EQ(st.tier_of(layer, int(slots)), 0);
      // ... and Promote copies whatever the counts.
      EXPECT_FALSE(use(int(slots) + 1, Placement::Promote));
      EXPECT_EQ(st.tier_of(layer, int(slots) + 1), 0);
    }
    EXPECT_EQ(st.stats().total().read_in_place, mapped ? 1u : 0u);
  }
}

// admit_copies: the fastest tier keeps at most its budget, admitting a copied record as it
// admits one to be read in place (room, or used more often than its victim); a record it does
// not admit is still copied in and handed out from it, and dropped at release, displacing
// nothing. Without admit_copies every copy is kept.
TEST_P(CacheTiers, CopiesTheFastestTierDoesNotAdmitDisplaceNothing) {
  int layer = 0;
  while (!model_->config().layer_is_moe[layer]) ++layer;
  ASSERT_GE(model_->config().num_experts, 4);
  for (const bool admit : {true, false}) {
    SCOPED_TRACE(admit ? "admit_copies" : "every copy kept");
    StreamOptions o = two_kept_gpu_like(model_->package(), all_experts_bytes());
    o.admit_copies = admit;
    ExpertStreamer st(model_->package(), o);
    const CacheTier& top = st.tier(0);
    ASSERT_EQ(top.budget_slots(), 2u);
    // Hands out expert e alone (copied into the fastest tier, or found there); returns the tier
    // it was in while pinned.
    auto use = [&](int e) {
      const int one[1] = {e};
      const int ticket = st.request(layer, one);
      std::vector<ExpertHandle> ready, all;
      while (st.take_ready(ticket, ready)) all.insert(all.end(), ready.begin(), ready.end());
      EXPECT_EQ(all.size(), 1u);
      EXPECT_TRUE(!all.empty() && !all[0].in_place && !all[0].on_host);
      const int where = st.tier_of(layer, e);
      st.release(ticket);
      return where;
    };
    for (int e : {0, 0, 1, 1}) EXPECT_EQ(use(e), 0) << e;  // room: both kept
    EXPECT_EQ(top.kept(), 2u);
    const uint64_t fills = st.stats().tiers[0].fills, evictions = st.stats().tiers[0].evictions;
    // Expert 2, used once, then twice: no more than the victim (used twice). Copied in for its
    // use either way; with admit_copies gone after, the kept records untouched.
    for (int n = 1; n <= 2; ++n) {
      EXPECT_EQ(use(2), 0);
      if (admit) {
        EXPECT_EQ(st.tier_of(layer, 2), int(st.ram_tier())) << n;
        EXPECT_EQ(st.tier_of(layer, 0), 0);
        EXPECT_EQ(st.tier_of(layer, 1), 0);
        EXPECT_EQ(top.kept(), 2u);
      } else {
        EXPECT_EQ(st.tier_of(layer, 2), 0) << n;
      }
    }
    EXPECT_EQ(st.stats().tiers[0].fills, fills + (admit ? 2u : 1u)) << "copied for each use";
    EXPECT_EQ(st.stats().tiers[0].evictions, evictions) << "free slots took them";
    if (admit) {
      // A third use beats the victim: admitted, in place of it; the tier keeps its budget.
      EXPECT_EQ(use(2), 0);
      EXPECT_EQ(st.tier_of(layer, 2), 0);
      EXPECT_EQ(top.kept(), 2u);
      EXPECT_EQ(st.stats().tiers[0].evictions, evictions + 1);
      EXPECT_EQ(int(st.tier_of(layer, 0) == 0) + int(st.tier_of(layer, 1) == 0), 1);
    }
  }
}

// Prefetch copies: once a prediction kind has proven accurate, its guesses that are in the RAM
// tier are copied into the fastest tier ahead of use — at once, or, when deferred behind a
// request, at that ticket's release() (behind the ticket's own copies). The first use of such a
// record carries the copy's readiness; a guess not used is counted as a wasted copy; a kind that
// is mostly wrong never copies; prefetch_copies 0 keeps prefetch at the RAM tier, and 1 copies
// only the first (best) guess.
TEST_P(CacheTiers, AccuratePredictionsAreCopiedIntoTheFastestTierAhead) {
  int layer = 0;
  while (!model_->config().layer_is_moe[layer]) ++layer;
  const int experts = model_->config().num_experts;
  ASSERT_GE(experts, 14);
  const size_t rec = model_->package().manifest().experts.record_bytes;
  for (const size_t limit : {size_t{2}, size_t{1}, size_t{0}}) {
    SCOPED_TRACE("prefetch copies " + std::to_string(limit));
    const bool enabled = limit > 0;
    WindowedCopyMemory* mem = nullptr;
    StreamOptions o;
    o.max_active = 2;
    o.ram_cache_bytes = size_t(experts) * rec;  // the layer's records all stay in RAM
    o.prefetch_copies = limit;
    // Working slots only: a record leaves the tier when released, unless prefetched unused.
    TierSpec t = host_tier("gpu-like", 0);
    t.make_memory = [&](size_t slots, size_t record_bytes) {
      auto m = std::make_unique<WindowedCopyMemory>(slots, record_bytes, /*polled=*/true);
      mem = m.get();
      return m;
    };
    o.upper_tiers = {t};
    ExpertStreamer st(model_->package(), o);
    const int ram = static_cast<int>(st.ram_tier());
    std::vector<ExpertHandle> ready, handed;
    auto use = [&](int a, int b) {
      const int pair[2] = {a, b};
      const int ticket = st.request(layer, pair);
      handed.clear();
      while (st.take_ready(ticket, ready)) handed.insert(handed.end(), ready.begin(), ready.end());
      st.release(ticket);
    };
    for (int e = 0; e + 1 < experts; e += 2) use(e, e + 1);  // every record into the RAM tier
    // Learning: look-ahead guesses always right, temporal ones always wrong.
    for (uint64_t i = 0; i < o.prefetch_copy_after / 2; ++i) {
      const int right[2] = {0, 1}, wrong[2] = {experts - 2, experts - 1};
      st.prefetch(layer, right, PrefetchKind::Lookahead);
      st.prefetch(layer, wrong, PrefetchKind::Temporal);
      use(0, 1);
    }
    EXPECT_EQ(st.stats().prefetch[1].copies, 0u) << "copied before the kind proved accurate";
    // A look-ahead guess is copied up at once.
    ASSERT_EQ(st.tier_of(layer, 4), ram);
    const int guess[2] = {4, 5}, temporal[2] = {6, 7};
    st.prefetch(layer, guess, PrefetchKind::Lookahead);
    st.prefetch(layer, temporal, PrefetchKind::Temporal);
    EXPECT_EQ(st.tier_of(layer, 4), enabled ? 0 : ram);
    EXPECT_EQ(st.tier_of(layer, 5), limit >= 2 ? 0 : ram) << "copied beyond the best guesses";
    EXPECT_EQ(st.tier_of(layer, 6), ram) << "an inaccurate kind's guess was copied";
    const uint64_t prefetch_hits = st.stats().layers[layer].prefetch_hits;
    use(4, 5);
    ASSERT_EQ(handed.size(), 2u);
    // Found in the fastest tier, yet the use waits for the copy that put it there.
    for (const ExpertHandle& h : handed) EXPECT_NE(h.ready, nullptr);
    EXPECT_EQ(st.stats().layers[layer].prefetch_hits - prefetch_hits, limit);
    EXPECT_EQ(st.tier_of(layer, 4), ram) << "a used prefetch copy outstayed a zero budget";
    // A wrong guess is a wasted copy.
    const int miss[2] = {8, 9};
    st.prefetch(layer, miss, PrefetchKind::Lookahead);
    use(10, 11);
    // Deferred behind a request: copied at its release, after the ticket's own copies.
    const int later[2] = {12, 13};
    st.prefetch_after_next_demand(layer, later, PrefetchKind::Lookahead);
    const int pair[2] = {2, 3};
    const int ticket = st.request(layer, pair);
    while (st.take_ready(ticket, ready)) {
    }
    EXPECT_EQ(st.tier_of(layer, 12), ram) << "a deferred copy went ahead of the ticket's own";
    st.release(ticket);
    EXPECT_EQ(st.tier_of(layer, 12), enabled ? 0 : ram);
    const PrefetchStats& look = st.stats().prefetch[1];
    EXPECT_EQ(look.copies, 3 * limit);
    EXPECT_EQ(look.wasted_copies, limit);
    EXPECT_EQ(st.stats().prefetch[0].copies, 0u);
    st.release();
    EXPECT_EQ(mem->sources_changed, 0u) << "a copy's source was reused before it landed";
  }
}

TEST_P(CacheTiers, OnlyTheFastestTierMayBeDeviceMemory) {
  const size_t rec = model_->package().manifest().experts.record_bytes;
  TierSpec device = host_tier("device", 2 * rec);
  device.make_memory = [](size_t slots, size_t record_bytes) {
    return std::make_unique<DeferredCopyMemory>(slots, record_bytes, /*host_accessible=*/false);
  };
  EngineOptions fastest;
  fastest.stream.upper_tiers = {device};
  EXPECT_NO_THROW(ExpertStreamer(model_->package(), fastest.stream));
  EngineOptions middle;
  middle.stream.upper_tiers = {host_tier("fast", rec), device};
  try {
    ExpertStreamer st(model_->package(), middle.stream);
    FAIL() << "a device-memory tier below the fastest was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'device' is not host memory"), std::string::npos)
        << e.what();
  }
  EngineOptions too_many;
  too_many.stream.upper_tiers = {host_tier("a", 0), host_tier("b", 0), host_tier("c", 0),
                                 host_tier("d", 0)};
  EXPECT_THROW(ExpertStreamer(model_->package(), too_many.stream), Error);
}

TEST_P(CacheTiers, ReadFailureWithUpperTiersLeavesTheSessionUsable) {
  const size_t rec = model_->package().manifest().experts.record_bytes;
  EngineOptions o;
  o.stream.prefetch = PrefetchMode::Both;
  o.stream.upper_tiers = {deferred_tier("gpu-like", 3 * rec)};
  o.stream.ram_cache_bytes = 2 * rec;
  expect_read_failure_surfaces_and_recovers(o, "controller reset");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CacheTiers,
                         testing::Values("qwen3_moe_sharded", "qwen3_5_moe_vl"));

}  // namespace
}  // namespace moeflux::test
