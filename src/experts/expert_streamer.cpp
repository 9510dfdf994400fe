#include "experts/expert_streamer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.hpp"

namespace moeflux {

PrefetchMode parse_prefetch_mode(const std::string& s) {
  if (s == "none") return PrefetchMode::None;
  if (s == "temporal") return PrefetchMode::Temporal;
  if (s == "lookahead") return PrefetchMode::Lookahead;
  if (s == "both") return PrefetchMode::Both;
  fail("--prefetch: unknown mode '" + s + "' (expected none, temporal, lookahead or both)");
}

const char* prefetch_mode_name(PrefetchMode m) {
  switch (m) {
    case PrefetchMode::None:
      return "none";
    case PrefetchMode::Temporal:
      return "temporal";
    case PrefetchMode::Lookahead:
      return "lookahead";
    case PrefetchMode::Both:
      return "both";
  }
  return "?";
}

size_t parse_byte_size(const std::string& s, const std::string& what) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || !(v >= 0) || std::isinf(v))
    fail(what + ": '" + s + "' is not a size (e.g. 0, 512M, 4G)");
  std::string unit = s.substr(used);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() > 1 && unit.back() == 'B') unit.pop_back();
  if (unit.size() > 1 && unit.back() == 'I') unit.pop_back();
  double mult = 1;
  if (unit.empty() || unit == "B")
    mult = 1;
  else if (unit == "K")
    mult = 1024.0;
  else if (unit == "M")
    mult = 1024.0 * 1024;
  else if (unit == "G")
    mult = 1024.0 * 1024 * 1024;
  else if (unit == "T")
    mult = 1024.0 * 1024 * 1024 * 1024;
  else
    fail(what + ": unknown unit in '" + s + "' (use K, M, G or T)");
  const double bytes = v * mult;
  if (bytes > 1e18) fail(what + ": '" + s + "' is too large");
  return static_cast<size_t>(bytes);
}

uint64_t LayerStreamStats::cache_hits() const {
  uint64_t n = 0;
  for (uint64_t h : tier_hits) n += h;
  return n;
}

LayerStreamStats StreamStats::total() const {
  LayerStreamStats t;
  for (const auto& l : layers) {
    t.requests += l.requests;
    for (size_t i = 0; i < kMaxCacheTiers; ++i) t.tier_hits[i] += l.tier_hits[i];
    t.prefetch_hits += l.prefetch_hits;
    t.misses += l.misses;
    t.host_computed += l.host_computed;
    t.read_in_place += l.read_in_place;
    t.io_wait_seconds += l.io_wait_seconds;
  }
  return t;
}

ExpertStreamer::ExpertStreamer(const Package& pkg, const StreamOptions& opts)
    : opts_(opts), record_bytes_(pkg.manifest().experts.record_bytes) {
  const ModelConfig& c = pkg.config();
  MF_ASSERT(opts.max_active > 0);
  if (opts.upper_tiers.size() + 1 > kMaxCacheTiers)
    fail("at most " + std::to_string(kMaxCacheTiers - 1) + " cache tiers above the RAM cache");
  // Working slots: the K records one acquire pins, plus 2K for prefetches in flight.
  const size_t work = 3 * static_cast<size_t>(opts.max_active);
  // Tier counters live in stats_.tiers (sized once here, never reallocated): each tier updates
  // its own entry.
  stats_.tiers.resize(opts.upper_tiers.size() + 1);
  auto add_tier = [&](const std::string& name, size_t budget_bytes, const std::string& policy,
                      const TierSpec* spec) {
    const size_t budget = budget_bytes / record_bytes_;
    const size_t slots = budget + work;
    const std::string what = name == "ram" ? "--ram-cache" : name + " cache tier";
    std::unique_ptr<TierMemory> mem;
    if (spec && spec->make_memory)
      mem = spec->make_memory(slots, record_bytes_);
    else if (!spec && opts.ram_memory)
      mem = opts.ram_memory(slots, record_bytes_);
    if (!mem) mem = make_host_tier_memory(slots, record_bytes_, what.c_str());
    tiers_.push_back(std::make_unique<CacheTier>(name, budget, work, std::move(mem), policy,
                                                 stats_.tiers[tiers_.size()]));
  };
  for (const TierSpec& t : opts.upper_tiers) add_tier(t.name, t.budget_bytes, t.policy, &t);
  add_tier("ram", opts.ram_cache_bytes, opts.policy, nullptr);
  for (size_t i = 1; i < tiers_.size(); ++i)
    if (!tiers_[i]->memory().host_accessible())
      fail("cache tier '" + tiers_[i]->name() +
           "' is not host memory: only the fastest tier may be");
  for (size_t i = 1; i < tiers_.size(); ++i)
    reads_in_place_ |= tiers_[i]->memory().device_readable();
  reads_in_place_ &= tiers_.size() > 1 && !tiers_.front()->memory().host_accessible();
  reader_ =
      opts.reader_factory ? opts.reader_factory(pkg, opts.io) : make_expert_reader(pkg, opts.io);
  spare_hot_ = [this](uint64_t k) { return is_hot(key_layer(k), key_expert(k)); };
  // Evicted unused: a wasted prefetch read (RAM tier) or copy (the fastest tier above it).
  evicted_from_ram_ = [this](TierSlot& v) {
    count_wasted_prefetch(v, &PrefetchStats::wasted_reads);
  };
  evicted_from_top_ = [this](TierSlot& v) {
    count_wasted_prefetch(v, &PrefetchStats::wasted_copies);
  };
  // The fastest tier spares records copied there by a prefetch until their use is scored.
  spare_top_ = [this](uint64_t k) {
    const TierSlot* s = tiers_.front()->find(k);
    return is_hot(key_layer(k), key_expert(k)) || (s && s->prefetched);
  };
  predicted_.resize(c.num_layers);
  use_counts_.assign(c.num_layers, std::vector<uint32_t>(c.num_experts, 0));
  hot_threshold_.assign(c.num_layers, 0);
  stats_.layers.resize(c.num_layers);
}

ExpertStreamer::~ExpertStreamer() {
  // Copies in flight read from the slower tiers' slots: let them land first.
  for (size_t t = 0; t + 1 < tiers_.size(); ++t) {
    try {
      tiers_[t]->memory().fence();
    } catch (const Error&) {
    }
  }
  // Reads in flight write into the RAM tier: let them finish before anything is freed.
  for (const auto& s : tiers_.back()->slots())
    if (s->read_in_flight) {
      try {
        reader_->wait(s->op);
      } catch (const Error&) {
      }
    }
  reader_.reset();
}

void ExpertStreamer::reset_stats() {
  for (auto& l : stats_.layers) l = LayerStreamStats{};
  for (auto& t : stats_.tiers) t = TierStats{};  // in place: the tiers hold references
  stats_.prefetch = {};
  stats_.storage_reads = 0;
}

void ExpertStreamer::count_wasted_prefetch(const TierSlot& s, uint64_t PrefetchStats::*wasted) {
  if (!s.prefetched) return;
  for (int k = 0; k < 2; ++k)
    if (s.prefetch_kinds & (1 << k)) ++(stats_.prefetch[k].*wasted);
}

bool ExpertStreamer::is_hot(int layer, int expert) const {
  return opts_.hot_per_layer > 0 && hot_threshold_[layer] > 0 &&
         use_counts_[layer][expert] >= hot_threshold_[layer];
}

void ExpertStreamer::count_use(int layer, int expert) {
  ++use_counts_[layer][expert];
  if (opts_.hot_per_layer == 0 || ++acquires_ % 256 != 0) return;
  // Re-rank: the hot set of a layer is its hot_per_layer most used experts so far.
  for (size_t l = 0; l < use_counts_.size(); ++l) {
    rank_scratch_.assign(use_counts_[l].begin(), use_counts_[l].end());
    std::vector<uint32_t>& c = rank_scratch_;
    const size_t n = std::min(opts_.hot_per_layer, c.size());
    std::nth_element(c.begin(), c.begin() + (n - 1), c.end(), std::greater<>());
    hot_threshold_[l] = c[n - 1];
  }
}

int ExpertStreamer::locate(uint64_t key, TierSlot** slot) {
  for (size_t t = 0; t < tiers_.size(); ++t)
    if ((*slot = tiers_[t]->find(key))) return static_cast<int>(t);
  return -1;
}

TierSlot* ExpertStreamer::take_ram_slot() {
  CacheTier& ram = *tiers_.back();
  TierSlot* s;
  while (!(s = ram.take_free(spare_hot_, evicted_from_ram_))) {
    // Every slot is pinned or loading. Sources of copies still in flight: wait for the copies.
    if (!draining_.empty()) {
      fence_upper_tiers();
      continue;
    }
    // Else wait for some unpinned read to land.
    TierSlot* busy = nullptr;
    for (const auto& c : ram.slots())
      if (c->occupied && c->pins == 0 && c->read_in_flight) busy = c.get();
    MF_ASSERT(busy != nullptr);  // slots >= 3K and one acquire pins K
    try {
      reader_->wait(busy->op);
    } catch (const Error&) {
    }
    busy->read_in_flight = false;
    if (busy->op.state.load(std::memory_order_acquire) == ReadOp::Failed) ram.drop(*busy);
  }
  return s;
}

void ExpertStreamer::claim_read(TierSlot& s, int layer, int expert) {
  tiers_.back()->insert(s, expert_key(layer, expert));
  s.op.layer = layer;
  s.op.expert = expert;
  s.op.dst = s.data;
  s.op.error.clear();
  s.op.state.store(ReadOp::Pending, std::memory_order_relaxed);
  s.read_in_flight = true;
}

void ExpertStreamer::prefetch(int layer, std::span<const int> experts, PrefetchKind kind) {
  const int k = static_cast<int>(kind);
  predicted_[layer][k].assign(experts.begin(), experts.end());
  stats_.prefetch[k].predictions += experts.size();
  std::vector<ReadOp*>& ops = reads_;
  ops.clear();
  const size_t copies = tiers_.size() > 1 && copies_earned(k) ? opts_.prefetch_copies : 0;
  for (size_t i = 0; i < experts.size(); ++i) {
    const int e = experts[i];
    TierSlot* s = nullptr;
    const uint64_t key = expert_key(layer, e);
    if (const int t = locate(key, &s); t >= 0) {  // already cached somewhere, or on its way
      if (s->prefetched) s->prefetch_kinds |= static_cast<uint8_t>(1 << k);
      if (t > 0 && i < copies) copy_queue_.emplace_back(key, k);
      continue;
    }
    s = tiers_.back()->take_free(spare_hot_, evicted_from_ram_);
    if (!s) break;  // every slot busy: skip the rest of this prediction
    claim_read(*s, layer, e);
    s->prefetched = true;
    s->prefetch_kinds = static_cast<uint8_t>(1 << k);
    ops.push_back(&s->op);
    ++stats_.prefetch[k].reads;
  }
  stats_.storage_reads += ops.size();
  if (!ops.empty()) reader_->submit(ops);
  if (!in_request_) issue_prefetch_copies();
}

bool ExpertStreamer::copies_earned(int k) const {
  return scored_[k] >= opts_.prefetch_copy_after &&
         double(scored_correct_[k]) >= kMinCopyAccuracy * double(scored_[k]);
}

void ExpertStreamer::issue_prefetch_copies() {
  if (copy_queue_.empty()) return;
  CacheTier& top = *tiers_.front();
  const size_t first_source = draining_.size();
  for (const auto& [key, k] : copy_queue_) {
    TierSlot* src = nullptr;
    const int t = locate(key, &src);
    if (t <= 0) continue;  // copied up meanwhile, or gone
    if (tiers_[t]->loading(*src) || src->op.state.load(std::memory_order_acquire) == ReadOp::Failed)
      continue;  // not readable yet: a use will promote it
    const void* ready = nullptr;
    TierSlot* dst = copy_into(0, key, *src, &ready);
    if (!dst) break;
    dst->copy_ready = ready;
    // The prefetched mark moves up with the record: its use (or waste) is counted once, there.
    dst->prefetched = true;
    dst->prefetch_kinds =
        static_cast<uint8_t>((1 << k) | (src->prefetched ? src->prefetch_kinds : 0));
    src->prefetched = false;
    src->prefetch_kinds = 0;
    ++stats_.prefetch[k].copies;
    ++src->pins;  // the copy's source, until its window lands
    draining_.push_back({static_cast<size_t>(t), src, -1, 0});
  }
  copy_queue_.clear();
  // One window of their own: it waits for the compute issued so far (the slots taken may be
  // read by it), and the sources drain as release()'s do.
  const uint64_t window = top.memory().close_window();
  for (size_t i = first_source; i < draining_.size(); ++i) draining_[i].window = window;
  if (window == 0) {  // memory without windows (host): land them now (free when synchronous)
    top.memory().fence();
    for (size_t i = first_source; i < draining_.size(); ++i) unpin(draining_[i]);
    draining_.resize(first_source);
  }
}

void ExpertStreamer::prefetch_after_next_demand(int layer, std::span<const int> experts,
                                                PrefetchKind kind) {
  if (n_deferred_ == deferred_.size()) deferred_.emplace_back();
  DeferredPrefetch& d = deferred_[n_deferred_++];
  d.layer = layer;
  d.experts.assign(experts.begin(), experts.end());
  d.kind = kind;
}

void ExpertStreamer::wait_for(TierSlot& s, int layer) {
  CacheTier& ram = *tiers_.back();
  if (!ram.loading(s)) {
    if (s.op.state.load(std::memory_order_acquire) == ReadOp::Failed) throw Error(s.op.error);
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto account = [&] {
    s.read_in_flight = false;
    stats_.layers[layer].io_wait_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  try {
    reader_->wait(s.op);
  } catch (...) {
    account();
    throw;
  }
  account();
}

void ExpertStreamer::score_predictions(int layer, std::span<const int> experts) {
  for (int k = 0; k < 2; ++k) {
    auto& pred = predicted_[layer][k];
    scored_[k] += pred.size();
    for (int e : pred) {
      if (std::find(experts.begin(), experts.end(), e) != experts.end()) {
        ++stats_.prefetch[k].correct;
        ++scored_correct_[k];
        continue;
      }
      TierSlot* s = nullptr;
      const int t = locate(expert_key(layer, e), &s);
      if (t < 0 || !s->prefetched) continue;
      CacheTier& tier = *tiers_[t];
      if (s->prefetch_kinds & (1 << k)) {
        PrefetchStats& p = stats_.prefetch[k];
        ++(size_t(t) == ram_tier() ? p.wasted_reads : p.wasted_copies);
      }
      s->prefetch_kinds &= static_cast<uint8_t>(~(1 << k));
      if (s->prefetch_kinds == 0) {
        s->prefetched = false;
        // Without a cache budget a mispredicted record is not kept (unless still loading;
        // then it lingers until evicted and may still serve a later request).
        if (!tier.keeps_records() && s->pins == 0 && !tier.loading(*s)) tier.drop(*s);
      }
    }
    pred.clear();
  }
}

TierSlot* ExpertStreamer::copy_into(size_t t, uint64_t key, const TierSlot& src, const void** ready,
                                    bool transient) {
  CacheTier& tier = *tiers_[t];
  // admit_copies: a record kept beyond the budget replaces the victim it was admitted over
  // (the free slots stay for transient copies).
  if (t == 0 && opts_.admit_copies && !transient && tier.keeps_records() &&
      tier.kept() >= tier.budget_slots())
    tier.evict(spare_top_, evicted_from_top_);
  TierSlot* dst =
      t == 0 ? tier.take_free(spare_top_, evicted_from_top_) : tier.take_free(spare_hot_, nullptr);
  if (!dst) return nullptr;
  const auto t0 = std::chrono::steady_clock::now();
  *ready = tier.memory().copy_in(dst->data, src.data, record_bytes_);
  tier.stats.copy_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  tier.stats.copied_bytes += record_bytes_;
  tier.insert(*dst, key, transient);
  return dst;
}

TierSlot* ExpertStreamer::promote(uint64_t key, TierSlot& src, size_t src_tier, const void** ready,
                                  bool transient) {
  TierSlot* fastest = &src;
  *ready = nullptr;
  for (size_t t = src_tier; t-- > 0;) {
    if (t > 0 && !tiers_[t]->keeps_records()) continue;  // would be dropped at once
    TierSlot* dst = copy_into(t, key, src, ready, transient && t == 0);
    MF_ASSERT(dst != nullptr);  // nothing loads in an upper tier, and one acquire pins K < 3K
    fastest = dst;
  }
  return fastest;
}

void ExpertStreamer::count_transferred() {
  for (size_t t = 0; t + 1 < tiers_.size(); ++t) {
    const TierMemory::Transferred x = tiers_[t]->memory().take_transferred();
    tiers_[t]->stats.transfer_bytes += x.bytes;
    tiers_[t]->stats.transfer_seconds += x.seconds;
    tiers_[t]->stats.read_bytes += x.read_bytes;
    tiers_[t]->stats.read_seconds += x.read_seconds;
  }
}

void ExpertStreamer::fence_upper_tiers() {
  for (size_t t = 0; t + 1 < tiers_.size(); ++t) tiers_[t]->memory().fence();
  count_transferred();
  for (const Pin& p : draining_) unpin(p);
  draining_.clear();
}

void ExpertStreamer::unpin_landed_sources() {
  if (draining_.empty()) return;
  TierMemory& top = tiers_.front()->memory();
  size_t kept = 0;
  for (const Pin& p : draining_) {
    if (top.landed(p.window))
      unpin(p);
    else
      draining_[kept++] = p;
  }
  draining_.resize(kept);
  count_transferred();
}

int ExpertStreamer::tier_of(int layer, int expert) {
  TierSlot* s = nullptr;
  return locate(expert_key(layer, expert), &s);
}

void ExpertStreamer::unpin(const Pin& p) {
  CacheTier& tier = *tiers_[p.tier];
  TierSlot& s = *p.slot;
  --s.pins;
  // A tier without a budget keeps nothing for reuse (prefetched records stay until used), nor
  // does any tier keep a record copied in without being admitted.
  if ((!tier.keeps_records() || s.transient) && s.occupied && s.pins == 0 && !tier.loading(s) &&
      !s.prefetched)
    tier.drop(s);
}

int ExpertStreamer::request(int layer, std::span<const int> experts,
                            std::span<const Placement> placement) {
  MF_ASSERT(placement.empty() || placement.size() == experts.size());
  const int ticket = next_ticket_++;
  unpin_landed_sources();
  LayerStreamStats& ls = stats_.layers[layer];
  score_predictions(layer, experts);
  const size_t ram_tier = tiers_.size() - 1;

  // Find each record in the fastest tier that has it, or start reading it into the RAM tier.
  reads_.clear();
  for (size_t i = 0; i < experts.size(); ++i) {
    const int e = experts[i];
    const uint64_t key = expert_key(layer, e);
    count_use(layer, e);
    ++ls.requests;
    Entry en;
    en.ticket = ticket;
    en.layer = layer;
    en.expert = e;
    en.index = i;
    en.placement = placement.empty() ? Placement::Promote : placement[i];
    TierSlot* s = nullptr;
    const int t = locate(key, &s);
    if (t >= 0) {
      if (s->prefetched) {  // brought by a prefetch read, or a prefetch copy
        ++ls.prefetch_hits;
        s->prefetched = false;
        s->prefetch_kinds = 0;
      } else {
        ++ls.tier_hits[t];
      }
      ++tiers_[t]->stats.hits;
      tiers_[t]->touch(key);
      en.tier = static_cast<size_t>(t);
    } else {
      s = take_ram_slot();
      claim_read(*s, layer, e);
      reads_.push_back(&s->op);
      ++ls.misses;
      en.tier = ram_tier;
      en.demand_read = true;
    }
    en.slot = s;
    ++s->pins;
    pinned_.push_back({en.tier, s, ticket, 0});
    entries_.push_back(en);
  }
  stats_.storage_reads += reads_.size();
  if (!reads_.empty()) {
    // Submitting is part of the time compute is blocked on I/O: on a machine with fewer cores
    // than reader threads, the woken readers may run (and copy) before submit() returns.
    const auto t0 = std::chrono::steady_clock::now();
    reader_->submit(reads_);
    ls.io_wait_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // Guesses about later layers queue behind this layer's demand reads.
  const size_t n = n_deferred_;
  n_deferred_ = 0;
  in_request_ = true;  // their copies, if any, wait for this ticket's release()
  for (size_t i = 0; i < n; ++i)
    prefetch(deferred_[i].layer, deferred_[i].experts, deferred_[i].kind);
  in_request_ = false;
  return ticket;
}

bool ExpertStreamer::try_take(Entry& e, std::vector<ExpertHandle>& ready) {
  TierSlot* s = e.slot;
  const size_t ram_tier = tiers_.size() - 1;
  if (e.tier == ram_tier) {
    CacheTier& ram = *tiers_.back();
    if (ram.loading(*s)) return false;
    if (s->op.state.load(std::memory_order_acquire) == ReadOp::Failed) {
      // A failed prefetch read is retried once as a demand read; a failed demand read fails.
      if (e.demand_read) throw Error(s->op.error);
      e.demand_read = true;
      s->op.error.clear();
      s->op.state.store(ReadOp::Pending, std::memory_order_relaxed);
      s->read_in_flight = true;
      ReadOp* op = &s->op;
      reader_->submit(std::span<ReadOp* const>(&op, 1));
      ++stats_.storage_reads;
      return false;
    }
  }
  e.taken = true;
  if (e.placement == Placement::Host && e.tier == ram_tier) {  // the CPU computes it there
    ++stats_.layers[e.layer].host_computed;
    ready.push_back({e.index, e.expert, s->data, nullptr, true, false});
    return true;
  }
  if (e.placement == Placement::InPlace && e.tier > 0 && reads_in_place_ &&
      tiers_[e.tier]->memory().device_readable() &&
      !top_admits(expert_key(e.layer, e.expert))) {  // the device reads it there
    ++stats_.layers[e.layer].read_in_place;
    e.in_place = true;
    if (reads_open_++ == 0) tiers_.front()->memory().open_reads();  // compute reading it: next
    ready.push_back({e.index, e.expert, s->data, nullptr, false, true});
    return true;
  }
  const void* copied = nullptr;
  if (e.tier > 0) {
    const uint64_t key = expert_key(e.layer, e.expert);
    const bool transient = opts_.admit_copies && !top_admits(key);
    TierSlot* top = promote(key, *s, e.tier, &copied, transient);
    ++top->pins;
    pinned_.push_back({0, top, e.ticket, 0});
    s = top;
  } else {
    copied = std::exchange(s->copy_ready, nullptr);  // a prefetch copy: its first use waits
  }
  ready.push_back({e.index, e.expert, s->data, copied, false, false});
  return true;
}

bool ExpertStreamer::top_admits(uint64_t key) {
  CacheTier& top = *tiers_.front();
  if (!top.keeps_records()) return false;  // it would drop the record once used
  // Room: with admit_copies the working slots stay for transient copies.
  if (opts_.admit_copies ? top.kept() < top.budget_slots() : top.has_free()) return true;
  uint64_t victim = 0;
  if (!top.peek_victim(spare_top_, &victim)) return false;  // every slot busy: no copy
  return use_counts_[key_layer(key)][key_expert(key)] >
         use_counts_[key_layer(victim)][key_expert(victim)];
}

bool ExpertStreamer::take_ready(int ticket, std::vector<ExpertHandle>& ready) {
  ready.clear();
  try {
    for (;;) {
      Entry* first_pending = nullptr;
      for (Entry& e : entries_) {
        if (e.ticket != ticket || e.taken) continue;
        if (!try_take(e, ready) && !first_pending) first_pending = &e;
      }
      if (!ready.empty() || !first_pending) break;
      // Nothing usable yet: wait for the earliest outstanding read of this ticket (the reader
      // serves requests in order), then look again.
      try {
        wait_for(*first_pending->slot, first_pending->layer);
      } catch (const Error&) {
        // try_take decides: retry a failed prefetch read, or fail.
      }
    }
    // The CPU computes from a host-accessible compute tier directly: its records must be whole.
    // A device tier's records carry their readiness instead; the copies just issued end their
    // window here, so that its timing (TierMemory::take_transferred) covers the copies and not
    // what the host does before release() (the CPU's share of a hybrid layer, waiting for reads).
    TierMemory& top = tiers_.front()->memory();
    if (top.host_accessible()) {
      fence_upper_tiers();
    } else if (const uint64_t w = top.close_window()) {
      window_ticket_ = ticket;
      ticket_window_ = w;
    }
  } catch (...) {
    abandon_all();
    throw;
  }
  return !ready.empty();
}

uint64_t ExpertStreamer::close_in_place_reads(int ticket) {
  auto mine = [ticket](const Entry& e) { return e.in_place && (ticket < 0 || e.ticket == ticket); };
  bool open = false;
  for (const Entry& e : entries_) open |= mine(e) && !e.reads_closed;
  if (open) {  // one window covers the compute issued so far: every ticket's records in it
    const uint64_t w =
        tiers_.front()->memory().close_reads(double(reads_open_) * double(record_bytes_));
    reads_open_ = 0;
    for (Entry& e : entries_)
      if (e.in_place && !e.reads_closed) {
        e.reads_closed = true;
        e.reads_window = w;
      }
  }
  uint64_t latest = 0;
  for (const Entry& e : entries_)
    if (mine(e)) latest = std::max(latest, e.reads_window);
  return latest;
}

void ExpertStreamer::abandon_all() {
  // Let the copies already issued (and the compute reading records in place) land — their
  // sources must not be reused before —, wait out the outstanding reads, drop what failed,
  // unpin; prefetch copies not issued are forgotten.
  copy_queue_.clear();
  close_in_place_reads(-1);
  fence_upper_tiers();
  CacheTier& ram = *tiers_.back();
  const size_t ram_tier = tiers_.size() - 1;
  for (Entry& e : entries_) {
    TierSlot* s = e.slot;
    if (e.tier == ram_tier && s->read_in_flight) {
      try {
        reader_->wait(s->op);
      } catch (const Error&) {
      }
      s->read_in_flight = false;
    }
  }
  for (const Pin& p : pinned_) --p.slot->pins;
  for (const Pin& p : pinned_)
    if (p.tier == ram_tier && p.slot->occupied && p.slot->pins == 0 &&
        p.slot->op.state.load() == ReadOp::Failed)
      ram.drop(*p.slot);
  pinned_.clear();
  entries_.clear();
}

void ExpertStreamer::release(int ticket) {
  // Copies into the host tiers between the RAM tier and the fastest complete at once (fence is
  // free there); the fastest tier's window closes without a wait, and the records in slower
  // tiers — the copies' sources — stay pinned until it has landed (unpin_landed_sources).
  for (size_t t = 1; t + 1 < tiers_.size(); ++t) tiers_[t]->memory().fence();
  TierMemory& top = tiers_.front()->memory();
  uint64_t window = top.close_window();
  if (window == 0 && window_ticket_ == ticket) window = ticket_window_;  // closed by take_ready
  // Records the device reads in place: their slots (and every source above) stay pinned until
  // the compute issued so far has finished — a later window than the copies', landing after.
  window = std::max(window, close_in_place_reads(ticket));  // windows land in order
  size_t kept = 0;
  for (Pin p : pinned_) {
    if (p.ticket != ticket) {
      pinned_[kept++] = p;
    } else if (window != 0 && p.tier > 0) {
      p.window = window;
      draining_.push_back(p);
    } else {
      unpin(p);
    }
  }
  pinned_.resize(kept);
  kept = 0;
  for (const Entry& e : entries_)
    if (e.ticket != ticket) entries_[kept++] = e;
  entries_.resize(kept);
  issue_prefetch_copies();  // deferred ones: behind this ticket's copies
}

void ExpertStreamer::acquire(int layer, std::span<const int> experts,
                             std::vector<const uint8_t*>& out) {
  const int ticket = request(layer, experts);
  out.assign(experts.size(), nullptr);
  while (take_ready(ticket, handles_))
    for (const ExpertHandle& h : handles_) out[h.index] = h.record;
  fence_upper_tiers();
}

void ExpertStreamer::release() {
  copy_queue_.clear();
  close_in_place_reads(-1);  // fenced with the copies
  fence_upper_tiers();
  for (const Pin& p : pinned_) unpin(p);
  pinned_.clear();
  entries_.clear();
}

}  // namespace moeflux
