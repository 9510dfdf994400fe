#include "model/blocks.hpp"

#include <algorithm>
#include <cmath>

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

void mlp_block(const ForwardContext& ctx, const MlpWeights& w, size_t intermediate,
               const float* x, float* out) {
  std::vector<float> g(intermediate), u(intermediate);
  cpu::matvec(w.gate, x, g.data(), ctx.pool);
  cpu::matvec(w.up, x, u.data(), ctx.pool);
  cpu::silu_mul(g.data(), u.data(), intermediate);
  cpu::matvec(w.down, g.data(), out, ctx.pool);
}

void moe_block(const ForwardContext& ctx, const MoeWeights& w, int layer, const float* x,
               float* out, RoutingRecord* routing) {
  const ModelConfig& c = ctx.config;
  const size_t H = c.hidden_size, I = c.moe_intermediate_size;
  std::vector<float> probs(c.num_experts);
  cpu::matvec(w.router, x, probs.data(), ctx.pool);
  cpu::softmax(probs.data(), probs.size());
  const std::vector<int> sel = cpu::top_k(probs.data(), probs.size(), ctx.active_experts);
  std::vector<float> weights(sel.size());
  float sum = 0;
  for (size_t i = 0; i < sel.size(); ++i) sum += (weights[i] = probs[sel[i]]);
  if (c.norm_topk_prob)
    for (float& wt : weights) wt /= sum;

  std::vector<uint8_t*> dst(sel.size());
  for (size_t i = 0; i < sel.size(); ++i) dst[i] = ctx.expert_bufs[i].data();
  ctx.experts.read(layer, sel, dst);

  std::fill(out, out + H, 0.0f);
  const ExpertLayout& el = ctx.expert_layout;
  std::vector<float> y(H);
  for (size_t i = 0; i < sel.size(); ++i) {
    const uint8_t* rec = dst[i];
    MlpWeights e;
    e.gate = MatrixView::from_record(el.fmt, el.gate.rows, el.gate.cols, rec + el.gate.offset);
    e.up = MatrixView::from_record(el.fmt, el.up.rows, el.up.cols, rec + el.up.offset);
    e.down = MatrixView::from_record(el.fmt, el.down.rows, el.down.cols, rec + el.down.offset);
    mlp_block(ctx, e, I, x, y.data());
    cpu::axpy(weights[i], y.data(), out, H);
  }
  if (w.has_shared) {
    float gate_logit = 0;
    cpu::matvec(w.shared_gate, x, &gate_logit, ctx.pool);
    mlp_block(ctx, w.shared, c.shared_expert_intermediate_size, x, y.data());
    cpu::axpy(cpu::sigmoid(gate_logit), y.data(), out, H);
  }
  if (routing) {
    routing->experts = sel;
    routing->weights = weights;
  }
}

}  // namespace moeflux
