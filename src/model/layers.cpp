#include "model/layers.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

namespace moeflux {

namespace {

float eps_of(const ModelConfig& c) {
  return static_cast<float>(c.rms_norm_eps);
}

// Rows of the sequence chunk s in a tensor of the batch.
Tensor rows_of(const Tensor& t, const SequenceChunk& s) {
  return t.rows_view(s.row0, s.rows);
}

}  // namespace

void input_norm(const ForwardContext& ctx, const float* w, int layer) {
  if (layer > 0) return;  // written by mlp_sublayer(layer - 1)
  ctx.be.rmsnorm(ctx.ws.h.rows_view(0, ctx.rows), w, ctx.ws.xn.rows_view(0, ctx.rows),
                 eps_of(ctx.config), ctx.family.zero_centered_norms);
}

namespace {

// The layer's combine, and with next_input_norm the next layer's input_norm() with it:
// ws.xn = rmsnorm(h) (the family's convention, as input_norm()).
void combine_into_h(const ForwardContext& ctx, const CombineArgs& cb,
                    const float* next_input_norm) {
  if (next_input_norm)
    ctx.be.combine_norm(cb, next_input_norm, eps_of(ctx.config), ctx.family.zero_centered_norms,
                        ctx.ws.xn.rows_view(0, ctx.rows));
  else
    ctx.be.combine(cb);
}

}  // namespace

void attention_block(const ForwardContext& ctx, const AttentionWeights& w, int layer, bool gated,
                     bool zero_centered) {
  const ModelConfig& c = ctx.config;
  const size_t T = ctx.rows, nh = c.num_heads, nkv = c.num_kv_heads, hd = c.head_dim;
  const size_t q_dim = nh * hd, kv_dim = nkv * hd, q_rows = q_dim * (gated ? 2 : 1);
  Backend& be = ctx.be;
  const Tensor proj = ctx.ws.proj.rows_view(0, T);
  const Tensor q = proj.cols_view(0, q_rows);
  const Tensor k = proj.cols_view(q_rows, kv_dim);
  const Tensor v = proj.cols_view(q_rows + kv_dim, kv_dim);
  const Projection p[3] = {{&w.q, q, w.q_bias}, {&w.k, k, w.k_bias}, {&w.v, v, w.v_bias}};
  be.matmul(ctx.ws.xn.rows_view(0, T), p);

  // qwen3_5: q_proj rows are per head [query (hd) | gate (hd)].
  const Tensor Q = q.heads(nh, hd, gated ? 2 * hd : hd);
  const Tensor G = gated ? q.cols_view(hd, q_rows - hd).heads(nh, hd, 2 * hd) : Tensor{};
  const Tensor K = k.heads(nkv, hd, hd), V = v.heads(nkv, hd, hd);
  const Tensor out = ctx.ws.mix.rows_view(0, T).cols_view(0, q_dim);
  for (const SequenceChunk& s : ctx.seqs) {
    // Per-head q/k RMSNorm where the model has it (glm4_moe: only with use_qk_norm), then RoPE.
    const Tensor Qs = rows_of(Q, s), Ks = rows_of(K, s);
    be.norm_rope(Qs, w.q_norm, Ks, w.k_norm, eps_of(c), zero_centered, ctx.rope, s.pos0);
    AttentionArgs a;
    a.q = Qs;
    a.k = Ks;
    a.v = rows_of(V, s);
    if (gated) a.gate = rows_of(G, s);
    a.cache = &s.state->layers[layer].kv;
    a.pos0 = s.pos0;
    a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    a.out = rows_of(out, s);
    be.attention(a);
  }
  const Projection o{&w.o, ctx.ws.h.rows_view(0, T), w.o_bias, /*accumulate=*/true};
  be.matmul(out, {&o, 1});
}

void gqa_mixer(const ForwardContext& ctx, const LayerWeights& w, int layer) {
  ScopedTimer timer(ctx.timer(layer, &LayerTimes::attention));
  input_norm(ctx, w.input_norm, layer);
  attention_block(ctx, w.attn, layer, /*gated=*/false, /*zero_centered=*/false);
}

void deltanet_block(const ForwardContext& ctx, const DeltaNetWeights& w, int layer) {
  const ModelConfig& c = ctx.config;
  const size_t T = ctx.rows, C = c.linear_conv_dim();
  const size_t nk = c.linear_num_key_heads, nv = c.linear_num_value_heads;
  const size_t dk = c.linear_key_head_dim, dv = c.linear_value_head_dim;
  const size_t key_dim = nk * dk, vdim = nv * dv;
  Backend& be = ctx.be;
  const Tensor proj = ctx.ws.proj.rows_view(0, T);
  const Tensor mixed = proj.cols_view(0, C);
  const Tensor z = proj.cols_view(C, vdim);
  const Tensor b = proj.cols_view(C + vdim, nv);
  const Tensor a = proj.cols_view(C + vdim + nv, nv);
  const Projection p[4] = {{&w.qkv, mixed}, {&w.z, z}, {&w.b, b}, {&w.a, a}};
  be.matmul(ctx.ws.xn.rows_view(0, T), p);

  const Tensor conv = ctx.ws.conv.rows_view(0, T);
  const Tensor o = ctx.ws.mix.rows_view(0, T).cols_view(0, vdim);
  for (const SequenceChunk& s : ctx.seqs) {
    DeltaNetState& st = s.state->layers[layer].delta;
    const Tensor cs = rows_of(conv, s);
    be.conv1d_silu(rows_of(mixed, s), w.conv, static_cast<size_t>(c.linear_conv_kernel), st.conv,
                   cs);
    DeltaRuleArgs d;
    d.q = cs.cols_view(0, key_dim).heads(nk, dk, dk);
    d.k = cs.cols_view(key_dim, key_dim).heads(nk, dk, dk);
    d.v = cs.cols_view(2 * key_dim, vdim).heads(nv, dv, dv);
    d.a = rows_of(a, s);
    d.b = rows_of(b, s);
    d.A_log = w.A_log;
    d.dt_bias = w.dt_bias;
    d.state = &st;
    d.out = rows_of(o, s).heads(nv, dv, dv);
    be.gated_delta_rule(d);
  }
  const Tensor g = ctx.ws.gated.rows_view(0, T).cols_view(0, vdim);
  be.rmsnorm_gated(o.heads(nv, dv, dv), z.heads(nv, dv, dv), w.norm, eps_of(c),
                   g.heads(nv, dv, dv));
  const Projection out{&w.out, ctx.ws.h.rows_view(0, T), nullptr, /*accumulate=*/true};
  be.matmul(g, {&out, 1});
}

namespace {

// Logits (and the shared-expert gate logit) of `w`'s router over ws.xn; routes into layer
// `layer`'s routing areas; waits for the result unless `wait` is false (the host then reads
// the routing only after the forward pass). Returns the shared gate column (empty without a
// shared expert).
Tensor route_rows(const ForwardContext& ctx, const MoeWeights& w, size_t T, int layer,
                  bool wait = true) {
  const size_t E = ctx.config.num_experts;
  const Tensor proj = ctx.ws.proj.rows_view(0, T);
  const Tensor logits = proj.cols_view(0, E);
  const Tensor gate = w.shared_gated ? proj.cols_view(E, 1) : Tensor{};
  const Projection p[2] = {{&w.router, logits}, {&w.shared_gate, gate}};
  ctx.be.matmul(ctx.ws.xn.rows_view(0, T), std::span<const Projection>(p, w.shared_gated ? 2 : 1));
  RouteOutput out;
  out.ids = ctx.ws.route_ids(layer);
  out.weights = ctx.ws.route_weights_of(layer);
  out.device_weights = ctx.ws.route_weights.f32();
  out.device_ids = ctx.ws.route_ids_dev;
  out.k = static_cast<size_t>(ctx.active_experts);
  RouterSpec spec = ctx.family.router(ctx.config, ctx.active_experts);
  spec.bias = w.router_bias;  // the layer's correction bias (grouped routers)
  ctx.be.route(logits, spec, out);
  if (wait) ctx.be.synchronize();  // the host reads the ids
  return gate;
}

}  // namespace

void record_routing(const ForwardContext& ctx, int layer) {
  const size_t K = ctx.active_experts;
  const int32_t* ids = ctx.ws.route_ids(layer);
  const float* wts = ctx.ws.route_weights_of(layer);
  auto fill = [&](RoutingRecord& r, size_t row) {
    r.experts.assign(ids + row * K, ids + (row + 1) * K);
    r.weights.assign(wts + row * K, wts + (row + 1) * K);
  };
  for (const SequenceChunk& s : ctx.seqs) {
    fill(s.state->last_routing[layer], s.row0 + s.rows - 1);
    if (ctx.on_routing) {
      std::vector<RoutingRecord>& recs = ctx.moe.records;
      recs.resize(s.rows);
      for (size_t r = 0; r < s.rows; ++r) fill(recs[r], s.row0 + r);
      (*ctx.on_routing)(layer, s.pos0, recs);
    }
  }
}

namespace {

MlpWeights expert_weights(const ExpertLayout& el, const uint8_t* rec) {
  MlpWeights e;
  e.gate = MatrixView::from_record(el.fmt, el.gate.rows, el.gate.cols, rec + el.gate.offset);
  e.up = MatrixView::from_record(el.fmt, el.up.rows, el.up.cols, rec + el.up.offset);
  e.down = MatrixView::from_record(el.fmt, el.down.rows, el.down.cols, rec + el.down.offset);
  return e;
}

// The CPU's share of a layer (hybrid): its tasks over the downloaded rows hx.x, into compact
// output rows, then scattered into the device slots (queued behind the GPU's expert work, ahead
// of the combine). The planner learns the CPU's rate from the wall time.
void run_on_host(const ForwardContext& ctx, HostExperts& hx, size_t T, size_t S) {
  const size_t H = hx.hidden;
  const auto t0 = std::chrono::steady_clock::now();
  size_t rows = 0;
  for (const ExpertTask& t : hx.tasks) rows += t.n;
  MF_ASSERT(rows <= T * S);
  // The CPU writes its rows compactly (task after task): out_local = 0, 1, ...; out_device says
  // where each goes among the device's slots.
  hx.out_local.resize(rows);
  std::iota(hx.out_local.begin(), hx.out_local.end(), 0);
  hx.out_device.clear();
  size_t at = 0;
  for (ExpertTask& t : hx.tasks) {
    hx.out_device.insert(hx.out_device.end(), t.out_rows, t.out_rows + t.n);
    t.out_rows = hx.out_local.data() + at;
    at += t.n;
  }
  const double bytes = static_cast<double>(ctx.expert_layout.record_bytes * rows);
  const Tensor x = Tensor::matrix(hx.x.data(), T, H, H, Memory::Host);
  const Tensor out = Tensor::matrix(hx.out.data(), rows, H, H, Memory::Host);
  hx.cpu->expert_ffn(x, hx.tasks, out);
  ctx.be.scatter_rows(hx.out.data(), H, hx.out_device, ctx.ws.slots);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  hx.planner.observe_cpu(bytes, s);
  hx.cpu_seconds += s;
  hx.cpu_bytes += bytes;
}

// Batches of at most this many rows may read RAM-tier records in place (EngineOptions::
// gpu_reads): the backend's matrix-vector products, which read each weight once.
constexpr size_t kInPlaceMaxRows = 8;

// The routed experts of the batch (+ an extra task, e.g. the shared expert, run with the first
// experts ready): every expert any row chose is fetched once and run over its rows; rows of
// expert e write slot t * S + i (i: e's rank in row t's choice). Experts go to the streamer in
// groups of K; the next group's reads are requested before this group computes, and within a
// group experts compute as their records become ready.
void run_experts(const ForwardContext& ctx, int layer, size_t T, size_t S,
                 const ExpertTask* extra) {
  MoeScratch& m = ctx.moe;
  const size_t K = ctx.active_experts, E = ctx.config.num_experts;
  const int32_t* ids = ctx.ws.route_ids(layer);
  std::fill(m.count.begin(), m.count.end(), 0);
  for (size_t i = 0; i < T * K; ++i) ++m.count[ids[i]];
  m.first[0] = 0;
  m.wanted.clear();
  for (size_t e = 0; e < E; ++e) {
    m.first[e + 1] = m.first[e] + m.count[e];
    if (m.count[e] > 0) m.wanted.push_back(static_cast<int>(e));
    m.count[e] = m.first[e];  // becomes the fill position
  }
  for (size_t t = 0; t < T; ++t)
    for (size_t i = 0; i < K; ++i) {
      const int e = ids[t * K + i];
      const int32_t at = m.count[e]++;
      m.in_rows[at] = static_cast<int32_t>(t);
      m.out_rows[at] = static_cast<int32_t>(t * S + i);
    }

  const ExpertLayout& el = ctx.expert_layout;
  if (ctx.resident) {  // every record in backend memory: all tasks at once
    const std::vector<const uint8_t*>& records = ctx.resident->host_records[layer];
    m.tasks.clear();
    for (const int e : m.wanted) {
      ExpertTask t;
      t.w = expert_weights(el, records[e]);
      t.intermediate = el.gate.rows;
      t.in_rows = &m.in_rows[m.first[e]];
      t.out_rows = &m.out_rows[m.first[e]];
      t.n = static_cast<size_t>(m.first[e + 1] - m.first[e]);
      m.tasks.push_back(t);
    }
    if (extra) m.tasks.push_back(*extra);
    ctx.be.expert_ffn(ctx.ws.xn.rows_view(0, T), m.tasks, ctx.ws.slots);
    return;
  }
  ExpertStreamer& st = ctx.streamer;
  const size_t groups = (m.wanted.size() + K - 1) / K;
  auto group = [&](size_t g) {
    return std::span<const int>(m.wanted.data() + g * K, std::min(K, m.wanted.size() - g * K));
  };
  HostExperts* hx = ctx.host_experts && ctx.host_experts->usable(T) ? ctx.host_experts : nullptr;
  bool x_on_host = hx && hx->x_ready;  // downloaded with the routing
  // The compute tier's copy counters before the layer: the planner learns the GPU side's rate
  // from the device-timed copies (and in-place reads) that landed meanwhile (this layer's, or
  // the ones before).
  const TierStats& copies = st.stats().tiers.front();
  const double copied_before = copies.transfer_bytes + copies.read_bytes;
  const double transfer_before = copies.transfer_seconds + copies.read_seconds;
  // The CPU's share of group g (hybrid), flags per expert; empty: the GPU computes all.
  auto plan = [&](size_t g) -> std::span<const uint8_t> {
    if (!hx) return {};
    const std::span<const int> experts = group(g);
    hx->where.resize(experts.size());
    hx->rows.resize(experts.size());
    hx->on_host.resize(experts.size());
    for (size_t i = 0; i < experts.size(); ++i) {
      const int e = experts[i], tier = st.tier_of(layer, e);
      hx->where[i] = tier < 0                                    ? RecordPlace::Storage
                     : size_t(tier) == st.ram_tier() && tier > 0 ? RecordPlace::Ram
                                                                 : RecordPlace::Gpu;
      hx->rows[i] = static_cast<size_t>(m.first[e + 1] - m.first[e]);
    }
    const bool share =
        hx->planner.plan_layer(hx->where, hx->rows, el.record_bytes, hx->on_host) > 0;
    hx->wake_pool_next = share || hx->planner.probe_due();  // wake the pool ahead of a probe too
    if (!share) return {};
    hx->cpu->wake();   // (spinning already, if woken before the routing wait: then nearly free)
    if (!x_on_host) {  // the CPU's inputs, before GPU expert work is queued ahead of the copy
      ctx.be.download(ctx.ws.xn.rows_view(0, T), hx->x.data(), hx->hidden);
      x_on_host = true;
    }
    return hx->on_host;
  };
  // How each record of group g is to be handed out: the CPU's share left in the RAM tier; with
  // in-place reads the GPU's other records there read across the bus where they lie (batches
  // of matrix-vector products only: they read each weight byte once, a GEMM's tiles again per
  // tile of rows); else everything promoted.
  const bool in_place = ctx.reads_in_place && T <= kInPlaceMaxRows;
  auto placement = [&](size_t g) -> std::span<const Placement> {
    const std::span<const uint8_t> on_host = plan(g);
    if (on_host.empty() && !in_place) return {};
    m.placement.resize(group(g).size());
    for (size_t i = 0; i < m.placement.size(); ++i)
      m.placement[i] = !on_host.empty() && on_host[i] ? Placement::Host
                       : in_place                     ? Placement::InPlace
                                                      : Placement::Promote;
    return m.placement;
  };
  const double waited_before = st.stats().layers[layer].io_wait_seconds;
  int ticket = groups > 0 ? st.request(layer, group(0), placement(0)) : -1;
  bool extra_done = extra == nullptr;
  for (size_t g = 0; g < groups; ++g) {
    const int next = g + 1 < groups ? st.request(layer, group(g + 1), placement(g + 1)) : -1;
    const std::span<const int> experts = group(g);
    while (st.take_ready(ticket, m.ready)) {
      m.tasks.clear();
      if (hx) hx->tasks.clear();
      size_t copied = 0;  // tasks at the back of m.tasks whose records are still being copied
      for (const ExpertHandle& h : m.ready) {
        const int e = experts[h.index];
        ExpertTask t;
        t.w = expert_weights(el, h.record);
        t.intermediate = el.gate.rows;
        t.in_rows = &m.in_rows[m.first[e]];
        t.out_rows = &m.out_rows[m.first[e]];
        t.n = static_cast<size_t>(m.first[e + 1] - m.first[e]);
        t.ready = h.ready;
        if (h.on_host) {
          hx->tasks.push_back(t);
        } else if (h.ready) {
          m.tasks.push_back(t);
          ++copied;
        } else {
          m.tasks.insert(m.tasks.end() - static_cast<std::ptrdiff_t>(copied), t);
        }
      }
      if (!extra_done) {
        m.tasks.insert(m.tasks.end() - static_cast<std::ptrdiff_t>(copied), *extra);
        extra_done = true;
      }
      // The records already on the GPU (or read in place) first, then those being copied (their
      // launches wait on the device for the copies; the host goes on), then the CPU's share.
      const std::span<const ExpertTask> tasks = m.tasks;
      if (tasks.size() > copied)
        ctx.be.expert_ffn(ctx.ws.xn.rows_view(0, T), tasks.first(tasks.size() - copied),
                          ctx.ws.slots);
      if (copied > 0)
        ctx.be.expert_ffn(ctx.ws.xn.rows_view(0, T), tasks.last(copied), ctx.ws.slots);
      if (hx && !hx->tasks.empty()) {
        st.reads_issued(ticket);  // the GPU's in-place reads timed without the CPU's share
        run_on_host(ctx, *hx, T, S);
      }
    }
    st.release(ticket);
    ticket = next;
  }
  if (hx)
    hx->planner.observe_copy(copies.transfer_bytes + copies.read_bytes - copied_before,
                             copies.transfer_seconds + copies.read_seconds - transfer_before);
  if (!extra_done) ctx.be.expert_ffn(ctx.ws.xn.rows_view(0, T), {extra, 1}, ctx.ws.slots);
  if (ctx.timings) {  // move the time blocked on reads from "experts" to "io_wait"
    const double waited = st.stats().layers[layer].io_wait_seconds - waited_before;
    ctx.timings->layers[layer].io_wait += waited;
    ctx.timings->layers[layer].experts -= waited;
  }
}

// An extra task over every row of the batch, writing slot t * S + K.
ExpertTask all_rows_task(const ForwardContext& ctx, const MlpWeights& w, size_t intermediate,
                         size_t T, size_t S, size_t K) {
  MoeScratch& m = ctx.moe;
  for (size_t t = 0; t < T; ++t) {
    m.all_rows[t] = static_cast<int32_t>(t);
    m.extra_slots[t] = static_cast<int32_t>(t * S + K);
  }
  ExpertTask task;
  task.w = w;
  task.intermediate = intermediate;
  task.in_rows = m.all_rows.data();
  task.out_rows = m.extra_slots.data();
  task.n = T;
  return task;
}

}  // namespace

void mlp_sublayer(const ForwardContext& ctx, const LayerWeights& w, int layer, bool zero_centered,
                  const float* next_input_norm) {
  const ModelConfig& c = ctx.config;
  const size_t T = ctx.rows;
  const Tensor h = ctx.ws.h.rows_view(0, T);
  if (!w.is_moe) {
    ScopedTimer timer(ctx.timer(layer, &LayerTimes::experts));
    ctx.be.rmsnorm(h, w.post_norm, ctx.ws.xn.rows_view(0, T), eps_of(c), zero_centered);
    const ExpertTask dense = all_rows_task(ctx, w.dense, c.intermediate_size, T, 1, 0);
    ctx.be.expert_ffn(ctx.ws.xn.rows_view(0, T), {&dense, 1}, ctx.ws.slots);
    CombineArgs cb;
    cb.slots = ctx.ws.slots;
    cb.slots_per_token = 1;
    cb.out = h;
    combine_into_h(ctx, cb, next_input_norm);
    return;
  }
  const size_t K = ctx.active_experts, S = K + (w.moe.has_shared ? 1 : 0);
  // Routing stays on the device, nothing waits; recorded after the pass (forward.cpp).
  const bool indexed = ctx.routes_on_device();
  Tensor shared_gate;
  {
    ScopedTimer timer(ctx.timer(layer, &LayerTimes::router));
    ctx.be.rmsnorm(h, w.post_norm, ctx.ws.xn.rows_view(0, T), eps_of(c), zero_centered);
    if (HostExperts* hx = ctx.host_experts; !indexed && hx && hx->usable(T)) {
      hx->x_ready = hx->wake_pool_next;
      if (hx->wake_pool_next) {  // a CPU share likely: its wake-up and rows with the routing
        hx->cpu->wake();
        ctx.be.download_async(ctx.ws.xn.rows_view(0, T), hx->x.data(), hx->hidden);
      }
    }
    shared_gate = route_rows(ctx, w.moe, T, layer, /*wait=*/!indexed);
    if (!indexed) record_routing(ctx, layer);
  }
  ScopedTimer timer(ctx.timer(layer, &LayerTimes::experts));
  ExpertTask shared;
  if (w.moe.has_shared)
    shared = all_rows_task(ctx, w.moe.shared, c.shared_expert_intermediate_size, T, S, K);
  if (indexed) {
    ctx.be.expert_ffn_indexed(ctx.ws.xn.rows_view(0, T), ctx.ws.route_ids_dev, K,
                              ctx.resident->layers[layer], ctx.ws.slots, S);
    if (w.moe.has_shared) ctx.be.expert_ffn(ctx.ws.xn.rows_view(0, T), {&shared, 1}, ctx.ws.slots);
  } else {
    run_experts(ctx, layer, T, S, w.moe.has_shared ? &shared : nullptr);
  }
  CombineArgs cb;
  cb.slots = ctx.ws.slots;
  cb.slots_per_token = S;
  cb.routed = ctx.ws.route_weights.f32();
  cb.k = K;
  cb.gate = shared_gate;
  cb.out = h;
  combine_into_h(ctx, cb, next_input_norm);
}

void lookahead_prefetch(const ForwardContext& ctx, const LayerWeights& next_w, int next,
                        bool zero_centered, bool after_demand) {
  const size_t T = ctx.rows, K = ctx.active_experts;
  // Only the last row: decode has one.
  const ForwardContext one{
      ctx.config,   ctx.family,  ctx.expert_layout,  ctx.be, ctx.ws,   ctx.moe,
      ctx.streamer, ctx.rope,    ctx.active_experts, 1,      ctx.seqs, ctx.timings,
      nullptr,      ctx.resident};
  ctx.be.rmsnorm(ctx.ws.h.rows_view(T - 1, 1), next_w.post_norm, ctx.ws.xn.rows_view(0, 1),
                 eps_of(ctx.config), zero_centered);
  route_rows(one, next_w.moe, 1, next);
  const std::span<const int> guess(ctx.ws.route_ids(next), K);
  if (after_demand)
    ctx.streamer.prefetch_after_next_demand(next, guess, PrefetchKind::Lookahead);
  else
    ctx.streamer.prefetch(next, guess, PrefetchKind::Lookahead);
}

void head_rows(const ForwardContext& ctx, const ModelWeights& w, bool zero_centered,
               size_t first_row, size_t n) {
  const Workspace& ws = ctx.ws;
  MF_ASSERT(n <= Workspace::kLogitRows);
  const Tensor xn = ws.xn.rows_view(0, n);
  ctx.be.rmsnorm(ws.h.rows_view(first_row, n), w.final_norm, xn, eps_of(ctx.config), zero_centered);
  const Projection p{&w.lm_head, ws.logits.rows_view(0, n)};
  ctx.be.matmul(xn, {&p, 1});
}

void download_logits(const ForwardContext& ctx, std::span<float* const> dst) {
  const size_t V = ctx.config.vocab_size;
  for (size_t i = 0; i < dst.size(); ++i) ctx.be.download(ctx.ws.logits.rows_view(i, 1), dst[i], V);
}

void final_logits(const ForwardContext& ctx, const ModelWeights& w, bool zero_centered,
                  size_t first_row, std::span<float* const> dst) {
  for (size_t b = 0; b < dst.size(); b += Workspace::kLogitRows) {
    const size_t n = std::min(Workspace::kLogitRows, dst.size() - b);
    head_rows(ctx, w, zero_centered, first_row + b, n);
    download_logits(ctx, dst.subspan(b, n));
  }
}

}  // namespace moeflux
