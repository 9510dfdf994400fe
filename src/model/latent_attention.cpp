// Multi-head latent attention (DeepSeek-V3's MLA, transformers' DeepseekV3Attention), computed
// in the absorbed form over the compressed cache. Per token, with nh heads, L = kv_lora_rank,
// R = qk_rope_head_dim, nope / v the other head dims:
//   q[h]       = W_q x (or W_qb rmsnorm(W_qa x))  = [q_nope[h] (nope) | q_rot[h] (R)]
//   [c | k_r]  = W_kva x;  c = rmsnorm(c) (L), k_r (R, shared by all heads)
//   rope on q_rot[h] and k_r (rotate_half; the package holds de-interleaved rope rows)
//   transformers:  k[s,h] = [W_UK[h] c_s | k_r,s],  v[s,h] = W_UV[h] c_s,
//                  o[h] = Σ_s softmax_s(scale q[h]·k[s,h]) v[s,h]
//   absorbed:      q_lat[h] = W_UK[h]^T q_nope[h]   (k_absorb, head_matmul)
//                  q[h]·k[s,h] = [q_lat[h] | q_rot[h]] · [c_s | k_r,s]
//                  o[h] = W_UV[h] Σ_s softmax_s(...) c_s   (attention over [c | k_r] keys and c
//                  values, one kv head; then v_up, head_matmul)
//   h += W_o [o[0] | ... | o[nh-1]]
// The cache holds [c | k_r] per position (L + R floats); its values are the first L columns.
// Prompt chunks use the same form (not the decompressed one): a chunk at position p > 0 would
// otherwise decompress all p cached latents per layer, and one path serves both (docs/PERF.md).
// scale = (nope + R)^-1/2, times yarn_mscale(factor, mscale_all_dim)^2 under YaRN when
// mscale_all_dim is set (transformers' DeepseekV3Attention.scaling).
#include <cmath>

#include "model/layers.hpp"
#include "model/rope.hpp"

namespace moeflux {

namespace {

float softmax_scale(const ModelConfig& c) {
  double s = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  if (c.rope.type != "default" && c.rope.mscale_all_dim != 0) {
    const double m = yarn_mscale(c.rope.factor, c.rope.mscale_all_dim);
    s *= m * m;
  }
  return static_cast<float>(s);
}

}  // namespace

void latent_attention_block(const ForwardContext& ctx, const LatentAttentionWeights& w, int layer) {
  const ModelConfig& c = ctx.config;
  const size_t T = ctx.rows, nh = c.num_heads, qk = c.head_dim, nope = c.qk_nope_head_dim;
  const size_t L = c.kv_lora_rank, R = c.qk_rope_head_dim, vd = c.v_head_dim;
  const size_t ql = static_cast<size_t>(c.q_lora_rank);
  const float eps = static_cast<float>(c.rms_norm_eps);
  Backend& be = ctx.be;
  const Workspace& ws = ctx.ws;
  const Tensor xn = ws.xn.rows_view(0, T);
  const Tensor proj = ws.proj.rows_view(0, T);
  const Tensor q = ws.q_full.rows_view(0, T).cols_view(0, nh * qk);
  const Tensor kva = proj.cols_view(ql, L + R);
  if (ql > 0) {
    const Tensor qa = proj.cols_view(0, ql);
    const Projection p[2] = {{&w.q_a, qa}, {&w.kv_a, kva}};
    be.matmul(xn, p);
    be.rmsnorm(qa, w.q_a_norm, qa, eps, false);
    const Projection pb{&w.q, q};
    be.matmul(qa, {&pb, 1});
  } else {
    const Projection p[2] = {{&w.q, q}, {&w.kv_a, kva}};
    be.matmul(xn, p);
  }
  const Tensor latent = kva.cols_view(0, L);
  be.rmsnorm(latent, w.kv_a_norm, latent, eps, false);

  // q_lat | q_rot per head, [T, nh, L + R].
  const Tensor qcat = ws.q_latent.rows_view(0, T).cols_view(0, nh * (L + R));
  be.head_matmul(q.heads(nh, nope, qk), w.k_absorb, qcat.heads(nh, L, L + R));
  const Tensor qrot = qcat.cols_view(L, nh * (L + R) - L).heads(nh, R, L + R);
  be.copy(q.cols_view(nope, nh * qk - nope).heads(nh, R, qk), qrot);
  const Tensor Q = qcat.heads(nh, L + R, L + R);
  const Tensor K = kva.heads(1, L + R, L + R), V = latent.heads(1, L, L);
  const Tensor Krot = kva.cols_view(L, R).heads(1, R, R);
  const Tensor olat = ws.o_latent.rows_view(0, T).cols_view(0, nh * L);
  const float scale = softmax_scale(c);
  for (const SequenceChunk& s : ctx.seqs) {
    auto rows = [&](const Tensor& t) { return t.rows_view(s.row0, s.rows); };
    be.norm_rope(rows(qrot), nullptr, rows(Krot), nullptr, 0.0f, false, ctx.rope, s.pos0);
    AttentionArgs a;
    a.q = rows(Q);
    a.k = rows(K);
    a.v = rows(V);
    a.cache = &s.state->layers[layer].kv;
    a.pos0 = s.pos0;
    a.scale = scale;
    a.out = rows(olat);
    be.attention(a);
  }
  const Tensor o = ws.mix.rows_view(0, T).cols_view(0, nh * vd);
  be.head_matmul(olat.heads(nh, L, L), w.v_up, o.heads(nh, vd, vd));
  const Projection po{&w.o, ws.h.rows_view(0, T), nullptr, /*accumulate=*/true};
  be.matmul(o, {&po, 1});
}

}  // namespace moeflux
