#include "model/blocks.hpp"

#include <algorithm>
#include <cmath>
#include <span>

#include "backend/cpu/matvec.hpp"
#include "backend/cpu/ops.hpp"
#include "core/error.hpp"

namespace moeflux {

namespace {

void add_bias(float* y, const float* bias, size_t n) {
  if (bias)
    for (size_t i = 0; i < n; ++i) y[i] += bias[i];
}

}  // namespace

void attention_block(const ForwardContext& ctx, const AttentionWeights& w, KvCache& cache,
                     const float* x, float* out, int pos, bool gated) {
  const ModelConfig& c = ctx.config;
  const int nh = c.num_heads, nkv = c.num_kv_heads, hd = c.head_dim;
  const size_t q_dim = size_t(nh) * hd, kv_dim = size_t(nkv) * hd;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const bool zc = c.zero_centered_norms();

  std::vector<float> qg(q_dim * (gated ? 2 : 1)), q(q_dim), gate(gated ? q_dim : 0);
  cpu::matvec(w.q, x, qg.data(), ctx.pool);
  add_bias(qg.data(), w.q_bias, qg.size());
  if (gated) {  // per head: [query(hd) | gate(hd)]
    for (int h = 0; h < nh; ++h)
      for (int d = 0; d < hd; ++d) {
        q[size_t(h) * hd + d] = qg[size_t(h) * 2 * hd + d];
        gate[size_t(h) * hd + d] = qg[size_t(h) * 2 * hd + hd + d];
      }
  } else {
    q = qg;
  }
  MF_ASSERT(cache.k.size() == size_t(pos) * kv_dim);
  cache.k.resize(size_t(pos + 1) * kv_dim);
  cache.v.resize(size_t(pos + 1) * kv_dim);
  float* k = cache.k.data() + size_t(pos) * kv_dim;
  float* v = cache.v.data() + size_t(pos) * kv_dim;
  cpu::matvec(w.k, x, k, ctx.pool);
  cpu::matvec(w.v, x, v, ctx.pool);
  add_bias(k, w.k_bias, kv_dim);
  add_bias(v, w.v_bias, kv_dim);
  for (int h = 0; h < nh; ++h) cpu::rmsnorm(&q[size_t(h) * hd], w.q_norm, &q[size_t(h) * hd], hd, eps, zc);
  for (int h = 0; h < nkv; ++h) cpu::rmsnorm(k + size_t(h) * hd, w.k_norm, k + size_t(h) * hd, hd, eps, zc);
  ctx.rope.apply(q.data(), nh, hd, pos);
  ctx.rope.apply(k, nkv, hd, pos);

  const int T = pos + 1;
  const int group = nh / nkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> attn(q_dim, 0.0f);
  // Heads in tasks of at least ~16K multiply-adds (scores + weighted sum).
  const size_t head_grain = std::max<size_t>(1, 16384 / (size_t(T) * hd * 2 + 1));
  ctx.pool.parallel_for(nh, [&](size_t hb, size_t he) {
    std::vector<float> scores(T);
    for (size_t h = hb; h < he; ++h) {
      const float* qh = &q[h * hd];
      const size_t kvh = h / group;
      for (int t = 0; t < T; ++t) {
        const float* kt = cache.k.data() + size_t(t) * kv_dim + kvh * hd;
        float s = 0;
        for (int d = 0; d < hd; ++d) s += qh[d] * kt[d];
        scores[t] = s * scale;
      }
      cpu::softmax(scores.data(), T);
      float* oh = &attn[h * hd];
      for (int t = 0; t < T; ++t)
        cpu::axpy(scores[t], cache.v.data() + size_t(t) * kv_dim + kvh * hd, oh, hd);
    }
  }, head_grain);
  if (gated)
    for (size_t i = 0; i < q_dim; ++i) attn[i] *= cpu::sigmoid(gate[i]);
  cpu::matvec(w.o, attn.data(), out, ctx.pool);
  add_bias(out, w.o_bias, c.hidden_size);
}

DeltaNetState make_deltanet_state(const ModelConfig& c) {
  DeltaNetState s;
  s.conv.assign(size_t(c.linear_conv_dim()) * (c.linear_conv_kernel - 1), 0.0f);
  s.S.assign(size_t(c.linear_num_value_heads) * c.linear_key_head_dim * c.linear_value_head_dim,
             0.0f);
  return s;
}

void deltanet_block(const ForwardContext& ctx, const DeltaNetWeights& w, DeltaNetState& st,
                    const float* x, float* out) {
  const ModelConfig& c = ctx.config;
  const int C = c.linear_conv_dim(), K = c.linear_conv_kernel;
  const int nk = c.linear_num_key_heads, nv = c.linear_num_value_heads;
  const int dk = c.linear_key_head_dim, dv = c.linear_value_head_dim;
  const size_t key_dim = size_t(nk) * dk;

  std::vector<float> mixed(C), z(size_t(nv) * dv), b(nv), a(nv);
  cpu::matvec(w.qkv, x, mixed.data(), ctx.pool);
  cpu::matvec(w.z, x, z.data(), ctx.pool);
  cpu::matvec(w.b, x, b.data(), ctx.pool);
  cpu::matvec(w.a, x, a.data(), ctx.pool);

  // Causal depthwise conv over [state (K-1 inputs) | this input], then SiLU; shift the state.
  std::vector<float> conv_out(C);
  for (int ch = 0; ch < C; ++ch) {
    const float* wc = w.conv + size_t(ch) * K;
    float* sc = st.conv.data() + size_t(ch) * (K - 1);
    float acc = wc[K - 1] * mixed[ch];
    for (int j = 0; j < K - 1; ++j) acc += wc[j] * sc[j];
    for (int j = 0; j + 1 < K - 1; ++j) sc[j] = sc[j + 1];
    if (K > 1) sc[K - 2] = mixed[ch];
    conv_out[ch] = cpu::silu(acc);
  }
  float* q = conv_out.data();
  float* k = q + key_dim;
  const float* v = k + key_dim;
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  for (int h = 0; h < nk; ++h) {
    cpu::l2norm(q + size_t(h) * dk, dk, 1e-6f);
    cpu::l2norm(k + size_t(h) * dk, dk, 1e-6f);
    for (int d = 0; d < dk; ++d) q[size_t(h) * dk + d] *= q_scale;
  }

  std::vector<float> o(size_t(nv) * dv);
  const int ratio = nv / nk;
  const float eps = static_cast<float>(c.rms_norm_eps);
  ctx.pool.parallel_for(nv, [&](size_t hb, size_t he) {
    std::vector<float> kv_mem(dv);
    for (size_t h = hb; h < he; ++h) {
      const float* qh = q + (h / ratio) * dk;
      const float* kh = k + (h / ratio) * dk;
      const float* vh = v + h * dv;
      float* S = st.S.data() + h * size_t(dk) * dv;  // S[i][j], i over keys, j over values
      const float beta = cpu::sigmoid(b[h]);
      const float g = -std::exp(w.A_log[h]) * cpu::softplus(a[h] + w.dt_bias[h]);
      const float decay = std::exp(g);
      std::fill(kv_mem.begin(), kv_mem.end(), 0.0f);
      for (int i = 0; i < dk; ++i) {
        float* Si = S + size_t(i) * dv;
        for (int j = 0; j < dv; ++j) {
          Si[j] *= decay;
          kv_mem[j] += Si[j] * kh[i];
        }
      }
      for (int j = 0; j < dv; ++j) kv_mem[j] = (vh[j] - kv_mem[j]) * beta;  // delta
      float* oh = o.data() + h * dv;
      std::fill(oh, oh + dv, 0.0f);
      for (int i = 0; i < dk; ++i) {
        float* Si = S + size_t(i) * dv;
        for (int j = 0; j < dv; ++j) {
          Si[j] += kh[i] * kv_mem[j];
          oh[j] += Si[j] * qh[i];
        }
      }
      cpu::rmsnorm(oh, w.norm, oh, dv, eps, /*zero_centered=*/false);
      for (int j = 0; j < dv; ++j) oh[j] *= cpu::silu(z[h * dv + j]);
    }
  }, std::max<size_t>(1, 16384 / (size_t(dk) * dv * 4)));  // >= ~16K flops per task
  cpu::matvec(w.out, o.data(), out, ctx.pool);
}

void mlp_batch(const ForwardContext& ctx, const MlpWeights& w, size_t intermediate, const float* X,
               size_t T, float* Y) {
  std::vector<float> g(T * intermediate), u(T * intermediate);
  cpu::matmul(w.gate, X, T, g.data(), ctx.pool);
  cpu::matmul(w.up, X, T, u.data(), ctx.pool);
  cpu::silu_mul(g.data(), u.data(), g.size());
  cpu::matmul(w.down, g.data(), T, Y, ctx.pool);
}

namespace {

// Softmax router + top-K (+ renormalisation): the experts and weights for one token.
RoutingRecord route(const ForwardContext& ctx, const MoeWeights& w, const float* x) {
  const ModelConfig& c = ctx.config;
  std::vector<float> probs(c.num_experts);
  cpu::matvec(w.router, x, probs.data(), ctx.pool);
  cpu::softmax(probs.data(), probs.size());
  RoutingRecord r;
  r.experts = cpu::top_k(probs.data(), probs.size(), ctx.active_experts);
  float sum = 0;
  for (int e : r.experts) sum += probs[e];
  for (int e : r.experts) r.weights.push_back(c.norm_topk_prob ? probs[e] / sum : probs[e]);
  return r;
}

}  // namespace

std::vector<int> route_only(const ForwardContext& ctx, const MoeWeights& w, const float* x) {
  return route(ctx, w, x).experts;
}

void moe_batch(const ForwardContext& ctx, const MoeWeights& w, int layer, const float* X, size_t T,
               float* Y, std::vector<RoutingRecord>* routing) {
  const ModelConfig& c = ctx.config;
  const size_t H = c.hidden_size, I = c.moe_intermediate_size;
  std::vector<RoutingRecord> routes(T);
  {
    ScopedTimer timer(ctx.timer(layer, &LayerTimes::router));
    for (size_t t = 0; t < T; ++t) routes[t] = route(ctx, w, X + t * H);
  }
  ScopedTimer expert_timer(ctx.timer(layer, &LayerTimes::experts));
  // Tokens per expert, experts in increasing id (the order of accumulation into Y, fixed so
  // that results do not depend on caching).
  std::vector<std::vector<std::pair<size_t, float>>> users(c.num_experts);
  for (size_t t = 0; t < T; ++t)
    for (size_t i = 0; i < routes[t].experts.size(); ++i)
      users[routes[t].experts[i]].emplace_back(t, routes[t].weights[i]);
  std::vector<int> wanted;
  for (int e = 0; e < c.num_experts; ++e)
    if (!users[e].empty()) wanted.push_back(e);

  std::fill(Y, Y + T * H, 0.0f);
  const ExpertLayout& el = ctx.expert_layout;
  std::vector<const uint8_t*> records;
  std::vector<float> Xe, Ye;
  for (size_t b = 0; b < wanted.size(); b += ctx.active_experts) {
    const std::span<const int> batch(wanted.data() + b,
                                     std::min<size_t>(ctx.active_experts, wanted.size() - b));
    {
      const double before = ctx.streamer.stats().layers[layer].io_wait_seconds;
      ctx.streamer.acquire(layer, batch, records);
      if (ctx.timings) {  // move the blocked time from "experts" to "io_wait"
        const double waited = ctx.streamer.stats().layers[layer].io_wait_seconds - before;
        ctx.timings->layers[layer].io_wait += waited;
        ctx.timings->layers[layer].experts -= waited;
      }
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      const auto& u = users[batch[i]];
      const uint8_t* rec = records[i];
      MlpWeights e;
      e.gate = MatrixView::from_record(el.fmt, el.gate.rows, el.gate.cols, rec + el.gate.offset);
      e.up = MatrixView::from_record(el.fmt, el.up.rows, el.up.cols, rec + el.up.offset);
      e.down = MatrixView::from_record(el.fmt, el.down.rows, el.down.cols, rec + el.down.offset);
      Xe.resize(u.size() * H);
      Ye.resize(u.size() * H);
      for (size_t j = 0; j < u.size(); ++j) std::copy_n(X + u[j].first * H, H, &Xe[j * H]);
      mlp_batch(ctx, e, I, Xe.data(), u.size(), Ye.data());
      for (size_t j = 0; j < u.size(); ++j) cpu::axpy(u[j].second, &Ye[j * H], Y + u[j].first * H, H);
    }
    ctx.streamer.release();
  }
  if (w.has_shared) {
    std::vector<float> gate_logit(T), shared(T * H);
    cpu::matmul(w.shared_gate, X, T, gate_logit.data(), ctx.pool);
    mlp_batch(ctx, w.shared, c.shared_expert_intermediate_size, X, T, shared.data());
    for (size_t t = 0; t < T; ++t) cpu::axpy(cpu::sigmoid(gate_logit[t]), &shared[t * H], Y + t * H, H);
  }
  if (routing) *routing = std::move(routes);
}

void mlp_sublayer(const ForwardContext& ctx, const LayerWeights& w, int layer, float* H, size_t T,
                  std::vector<RoutingRecord>* routing) {
  const ModelConfig& c = ctx.config;
  const size_t D = c.hidden_size;
  std::vector<float> X(T * D), Y(T * D);
  for (size_t t = 0; t < T; ++t)
    cpu::rmsnorm(H + t * D, w.post_norm, &X[t * D], D, static_cast<float>(c.rms_norm_eps),
                 c.zero_centered_norms());
  if (w.is_moe) {
    moe_batch(ctx, w.moe, layer, X.data(), T, Y.data(), routing);
  } else {
    ScopedTimer timer(ctx.timer(layer, &LayerTimes::experts));
    mlp_batch(ctx, w.dense, c.intermediate_size, X.data(), T, Y.data());
  }
  for (size_t i = 0; i < T * D; ++i) H[i] += Y[i];
}

}  // namespace moeflux
