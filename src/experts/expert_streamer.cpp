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

LayerStreamStats StreamStats::total() const {
  LayerStreamStats t;
  for (const auto& l : layers) {
    t.requests += l.requests;
    t.ram_hits += l.ram_hits;
    t.prefetch_hits += l.prefetch_hits;
    t.misses += l.misses;
    t.io_wait_seconds += l.io_wait_seconds;
  }
  return t;
}

ExpertStreamer::ExpertStreamer(const Package& pkg, const StreamOptions& opts)
    : opts_(opts), record_bytes_(pkg.manifest().experts.record_bytes) {
  const ModelConfig& c = pkg.config();
  MF_ASSERT(opts.max_active > 0);
  cache_slots_ = opts.ram_cache_bytes / record_bytes_;
  const size_t work = 3 * static_cast<size_t>(opts.max_active);
  const size_t n = cache_slots_ + work;
  reader_ = opts.reader_factory ? opts.reader_factory(pkg, opts.io) : make_expert_reader(pkg, opts.io);
  try {
    arena_ = AlignedBuffer(n * record_bytes_, kExpertAlignment);
  } catch (const std::bad_alloc&) {
    fail("--ram-cache: cannot allocate " + std::to_string(n * record_bytes_ >> 20) + " MiB for " +
         std::to_string(n) + " expert records");
  }
  for (size_t i = 0; i < n; ++i) {
    auto s = std::make_unique<Slot>();
    s->data = arena_.data() + i * record_bytes_;
    slots_.push_back(std::move(s));
  }
  index_.reserve(n * 2);
  policy_ = make_eviction_policy(opts.policy, n);
  predicted_.resize(c.num_layers);
  use_counts_.assign(c.num_layers, std::vector<uint32_t>(c.num_experts, 0));
  hot_threshold_.assign(c.num_layers, 0);
  stats_.layers.resize(c.num_layers);
}

ExpertStreamer::~ExpertStreamer() {
  // Reads in flight write into the arena: let them finish before anything is freed.
  for (auto& s : slots_)
    if (s->read_in_flight) {
      try {
        reader_->wait(s->op);
      } catch (const Error&) {
      }
    }
  reader_.reset();
}

void ExpertStreamer::reset_stats() {
  const size_t n = stats_.layers.size();
  stats_ = StreamStats{};
  stats_.layers.resize(n);
}

ExpertStreamer::Slot* ExpertStreamer::find(uint64_t key) {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : it->second;
}

bool ExpertStreamer::in_flight(Slot& s) {
  if (s.read_in_flight && s.op.state.load(std::memory_order_acquire) != ReadOp::Pending)
    s.read_in_flight = false;
  return s.read_in_flight;
}

void ExpertStreamer::drop(Slot& s) {
  MF_ASSERT(s.occupied && s.pins == 0 && !s.read_in_flight);
  index_.erase(s.key);
  policy_->on_erase(s.key);
  s.occupied = false;
  s.prefetched = false;
  s.prefetch_kinds = 0;
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
    std::vector<uint32_t> c = use_counts_[l];
    const size_t n = std::min(opts_.hot_per_layer, c.size());
    std::nth_element(c.begin(), c.begin() + (n - 1), c.end(), std::greater<>());
    hot_threshold_[l] = c[n - 1];
  }
}

ExpertStreamer::Slot* ExpertStreamer::take_slot() {
  for (auto& s : slots_)
    if (!s->occupied) return s.get();
  uint64_t key = 0;
  auto evictable = [&](uint64_t k, bool spare_hot) {
    Slot* s = index_.at(k);
    return s->pins == 0 && !in_flight(*s) && !(spare_hot && is_hot(key_layer(k), key_expert(k)));
  };
  if (!policy_->victim([&](uint64_t k) { return evictable(k, true); }, &key) &&
      !policy_->victim([&](uint64_t k) { return evictable(k, false); }, &key))
    return nullptr;
  Slot* s = index_.at(key);
  if (s->prefetched) {  // evicted before anyone used it
    for (int k = 0; k < 2; ++k)
      if (s->prefetch_kinds & (1 << k)) ++stats_.prefetch[k].wasted_reads;
    s->prefetched = false;
  }
  drop(*s);
  ++stats_.evictions;
  return s;
}

void ExpertStreamer::claim(Slot& s, int layer, int expert) {
  const uint64_t key = expert_key(layer, expert);
  s.key = key;
  s.occupied = true;
  s.op.layer = layer;
  s.op.expert = expert;
  s.op.dst = s.data;
  s.op.error.clear();
  s.op.state.store(ReadOp::Pending, std::memory_order_relaxed);
  s.read_in_flight = true;
  index_[key] = &s;
  policy_->on_insert(key);
}

void ExpertStreamer::prefetch(int layer, std::span<const int> experts, PrefetchKind kind) {
  const int k = static_cast<int>(kind);
  predicted_[layer][k].assign(experts.begin(), experts.end());
  stats_.prefetch[k].predictions += experts.size();
  std::vector<ReadOp*> ops;
  for (int e : experts) {
    const uint64_t key = expert_key(layer, e);
    if (Slot* s = find(key)) {
      if (s->prefetched) s->prefetch_kinds |= static_cast<uint8_t>(1 << k);
      continue;
    }
    Slot* s = take_slot();
    if (!s) break;  // every slot busy: skip the rest of this prediction
    claim(*s, layer, e);
    s->prefetched = true;
    s->prefetch_kinds = static_cast<uint8_t>(1 << k);
    ops.push_back(&s->op);
    ++stats_.prefetch[k].reads;
  }
  stats_.storage_reads += ops.size();
  if (!ops.empty()) reader_->submit(ops);
}

void ExpertStreamer::wait_for(Slot& s, int layer) {
  if (!in_flight(s)) {
    if (s.op.state.load(std::memory_order_acquire) == ReadOp::Failed) throw Error(s.op.error);
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    reader_->wait(s.op);
  } catch (...) {
    s.read_in_flight = false;
    stats_.layers[layer].io_wait_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    throw;
  }
  s.read_in_flight = false;
  stats_.layers[layer].io_wait_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void ExpertStreamer::acquire(int layer, std::span<const int> experts,
                             std::vector<const uint8_t*>& out) {
  MF_ASSERT(pinned_.empty());
  LayerStreamStats& ls = stats_.layers[layer];
  // Score the predictions made for this layer.
  for (int k = 0; k < 2; ++k) {
    auto& pred = predicted_[layer][k];
    for (int e : pred) {
      const bool used = std::find(experts.begin(), experts.end(), e) != experts.end();
      if (used) {
        ++stats_.prefetch[k].correct;
      } else if (Slot* s = find(expert_key(layer, e)); s && s->prefetched) {
        if (s->prefetch_kinds & (1 << k)) ++stats_.prefetch[k].wasted_reads;
        s->prefetch_kinds &= static_cast<uint8_t>(~(1 << k));
        if (s->prefetch_kinds == 0) {
          s->prefetched = false;
          // Without a cache budget a mispredicted record is not kept (unless still loading;
          // then it lingers until evicted and may still serve a later request).
          if (cache_slots_ == 0 && s->pins == 0 && !in_flight(*s)) drop(*s);
        }
      }
    }
    pred.clear();
  }

  std::vector<Slot*> slot_of(experts.size());
  std::vector<ReadOp*> misses;
  for (size_t i = 0; i < experts.size(); ++i) {
    const int e = experts[i];
    const uint64_t key = expert_key(layer, e);
    count_use(layer, e);
    ++ls.requests;
    Slot* s = find(key);
    if (s) {
      if (s->prefetched) {
        ++ls.prefetch_hits;
        s->prefetched = false;
        s->prefetch_kinds = 0;
      } else {
        ++ls.ram_hits;
      }
      policy_->on_hit(key);
    } else {
      while (!(s = take_slot())) {
        // Every slot is pinned or loading: wait for some unpinned read to land.
        Slot* busy = nullptr;
        for (auto& c : slots_)
          if (c->occupied && c->pins == 0 && c->read_in_flight) busy = c.get();
        MF_ASSERT(busy != nullptr);  // slots >= 3K, so they cannot all be pinned
        try {
          reader_->wait(busy->op);
        } catch (const Error&) {
        }
        busy->read_in_flight = false;
        if (busy->op.state.load(std::memory_order_acquire) == ReadOp::Failed) drop(*busy);
      }
      claim(*s, layer, e);
      misses.push_back(&s->op);
      ++ls.misses;
    }
    ++s->pins;
    pinned_.push_back(s);
    slot_of[i] = s;
  }
  stats_.storage_reads += misses.size();
  if (!misses.empty()) reader_->submit(misses);

  out.resize(experts.size());
  try {
    for (size_t i = 0; i < experts.size(); ++i) {
      Slot* s = slot_of[i];
      try {
        wait_for(*s, layer);
      } catch (const Error&) {
        // A failed prefetch read is retried once as a demand read; a failed demand read fails.
        const bool was_demand = std::find(misses.begin(), misses.end(), &s->op) != misses.end();
        if (was_demand) throw;
        s->op.error.clear();
        s->op.state.store(ReadOp::Pending, std::memory_order_relaxed);
        s->read_in_flight = true;
        ReadOp* op = &s->op;
        reader_->submit(std::span<ReadOp* const>(&op, 1));
        ++stats_.storage_reads;
        wait_for(*s, layer);
      }
      out[i] = s->data;
    }
  } catch (...) {
    // Leave the streamer usable: wait out this call's reads, drop what failed, unpin.
    for (Slot* s : slot_of) {
      if (s->read_in_flight) {
        try {
          reader_->wait(s->op);
        } catch (const Error&) {
        }
        s->read_in_flight = false;
      }
    }
    for (Slot* s : pinned_) --s->pins;
    for (Slot* s : pinned_)
      if (s->occupied && s->pins == 0 && s->op.state.load() == ReadOp::Failed) drop(*s);
    pinned_.clear();
    throw;
  }
}

void ExpertStreamer::release() {
  for (Slot* s : pinned_) {
    --s->pins;
    // Without a cache budget nothing is kept for reuse (prefetched records stay until used).
    if (cache_slots_ == 0 && s->occupied && s->pins == 0 && !in_flight(*s) && !s->prefetched)
      drop(*s);
  }
  pinned_.clear();
}

}  // namespace moeflux
