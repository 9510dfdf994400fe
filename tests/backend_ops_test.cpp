// Every Backend op (backend/backend.hpp) against an independent float64 reference written here,
// on fresh random inputs (the seed is new each run and printed on failure), with outputs
// poisoned with NaN first so that an element the op fails to write cannot pass. Strided views
// (row pitches wider than the rows, heads of a wider projection) are used wherever the model
// uses them. Parameterised over backends: the CUDA backend joins with its own factory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "backend/cpu/cpu_backend.hpp"
#include "core/top_k.hpp"
#include "host_tensor.hpp"
#include "random_weights.hpp"

namespace moeflux::test {
namespace {

double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

// One query's attention in float64: o = Σ_j softmax_j(scale · q·K[j]) V[j] over len positions,
// K[j] = K0 + j * k_pitch (dk floats), V[j] = V0 + j * v_pitch (dv floats).
std::vector<double> reference_attention(const float* q, const float* K0, size_t k_pitch,
                                        const float* V0, size_t v_pitch, size_t len, size_t dk,
                                        size_t dv, double scale) {
  std::vector<double> s(len), o(dv, 0.0);
  double mx = -1e300, sum = 0;
  for (size_t j = 0; j < len; ++j) {
    double dot = 0;
    for (size_t d = 0; d < dk; ++d) dot += double(q[d]) * K0[j * k_pitch + d];
    mx = std::max(mx, s[j] = dot * scale);
  }
  for (double& e : s) sum += (e = std::exp(e - mx));
  for (size_t j = 0; j < len; ++j)
    for (size_t d = 0; d < dv; ++d) o[d] += s[j] / sum * V0[j * v_pitch + d];
  return o;
}
double silu(double x) {
  return x * sigmoid(x);
}
double softplus(double x) {
  return x > 20 ? x : std::log1p(std::exp(x));
}

std::unique_ptr<Backend> make_backend(const std::string& name) {
  if (name == "cpu") return std::make_unique<CpuBackend>(3);  // > cores: exercises the splits
  return nullptr;
}

class BackendOps : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    rng_.seed(seed_);
    be_ = make_backend(GetParam());
    ASSERT_NE(be_, nullptr);
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
  std::unique_ptr<Backend> be_;
};

TEST_P(BackendOps, EmbedDecodesTheRowsOfEveryFormat) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (QuantFormat f : {QuantFormat::f32(), QuantFormat::bf16(), QuantFormat::q8_0(),
                        QuantFormat::q4(), QuantFormat::affine(8, 32)}) {
    SCOPED_TRACE(format_name(f));
    RandomMatrix E(f, 37, 128, rng_);
    const std::vector<int> tokens = {5, 0, 36, 5};
    HostTensor X(tokens.size(), 128);
    be_->embed(E.view, tokens, X.t);
    for (size_t t = 0; t < tokens.size(); ++t)
      for (size_t c = 0; c < 128; ++c) {
        const double want = ref_value(E.view, tokens[t], c);
        ASSERT_NEAR(X.at(t, c), want, 1e-6 * std::fabs(want) + 1e-7) << t << "," << c;
      }
  }
}

TEST_P(BackendOps, RmsNormOverRowsAndStridedHeads) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const float eps = 1e-6f;
  for (bool zc : {false, true}) {
    std::vector<float> w = random_vector(16, rng_);
    // Rank 3: 3 rows of 4 heads of 16, heads 32 apart (query | gate layout), into a packed y.
    HostTensor x(3, 4 * 32), y(3, 4 * 16);
    x.randomize(rng_);
    const Tensor xh = x.t.heads(4, 16, 32), yh = y.t.heads(4, 16, 16);
    std::vector<float> before = x.mem;
    be_->rmsnorm(xh, w.data(), yh, eps, zc);
    for (size_t r = 0; r < 3; ++r)
      for (size_t h = 0; h < 4; ++h) {
        const float* v = xh.vec(r, h);
        double ss = 0;
        for (int d = 0; d < 16; ++d) ss += double(v[d]) * v[d];
        const double inv = 1.0 / std::sqrt(ss / 16 + eps);
        for (int d = 0; d < 16; ++d) {
          const double want = v[d] * inv * (zc ? 1.0 + w[d] : w[d]);
          ASSERT_NEAR(yh.vec(r, h)[d], want, 1e-5 * std::fabs(want) + 1e-6);
        }
      }
    EXPECT_EQ(x.mem, before) << "input changed";
    // Rank 2, in place.
    HostTensor z(5, 16);
    z.randomize(rng_);
    const std::vector<float> orig = z.mem;
    be_->rmsnorm(z.t, w.data(), z.t, eps, zc);
    for (size_t r = 0; r < 5; ++r) {
      const float* v = orig.data() + r * z.t.pitch();
      double ss = 0;
      for (int d = 0; d < 16; ++d) ss += double(v[d]) * v[d];
      for (int d = 0; d < 16; ++d) {
        const double want = v[d] / std::sqrt(ss / 16 + eps) * (zc ? 1.0 + w[d] : w[d]);
        ASSERT_NEAR(z.at(r, d), want, 1e-5 * std::fabs(want) + 1e-6);
      }
    }
  }
}

TEST_P(BackendOps, MatmulOfSeveralProjectionsWithBiasAndAccumulation) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t cols = 256;
  for (QuantFormat f : {QuantFormat::f32(), QuantFormat::bf16(), QuantFormat::q8_0(),
                        QuantFormat::q4(), QuantFormat::affine(8, 64)}) {
    for (size_t T : {1, 5, 20}) {
      SCOPED_TRACE(format_name(f) + ", T=" + std::to_string(T));
      RandomMatrix A(f, 40, cols, rng_), B(f, 17, cols, rng_), C(f, 64, cols, rng_);
      HostTensor X(T, cols);
      X.randomize(rng_);
      HostTensor YA(T, 40), YB(T, 17), YC(T, 64);
      YC.randomize(rng_);  // accumulated into
      const std::vector<float> c_before = YC.mem;
      const std::vector<float> bias = random_vector(17, rng_);
      const Projection p[3] = {{&A.view, YA.t},
                               {&B.view, YB.t, bias.data()},
                               {&C.view, YC.t, nullptr, /*accumulate=*/true}};
      be_->matmul(X.t, p);
      auto check = [&](const RandomMatrix& W, HostTensor& Y, const float* b, bool acc) {
        for (size_t t = 0; t < T; ++t) {
          const Reference ref = reference(W.view, X.t.row(t));
          for (size_t r = 0; r < W.view.rows; ++r) {
            double want = ref.y[r] + (b ? b[r] : 0.0);
            if (acc) want += c_before[t * Y.t.pitch() + r];
            ASSERT_NEAR(Y.at(t, r), want, ref.tol[r] + 1e-6 * std::fabs(want)) << t << "," << r;
          }
        }
      };
      check(A, YA, nullptr, false);
      check(B, YB, bias.data(), false);
      check(C, YC, nullptr, true);
    }
  }
}

TEST_P(BackendOps, RopeRotatesThePartialDimsAtEachRowsPosition) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t positions = 16, half = 4, dim = 12, heads = 3, T = 5;
  const int pos0 = 7;
  HostTensor cs(positions, half, 0), sn(positions, half, 0);
  std::uniform_real_distribution<double> angle(-3.0, 3.0);
  for (size_t p = 0; p < positions; ++p)
    for (size_t i = 0; i < half; ++i) {
      const double a = angle(rng_);
      cs.at(p, i) = static_cast<float>(std::cos(a) * 0.9);
      sn.at(p, i) = static_cast<float>(std::sin(a) * 0.9);
    }
  const RopeTable table{cs.t, sn.t, static_cast<int>(2 * half)};
  HostTensor x(T, heads * 2 * dim);
  x.randomize(rng_);
  const Tensor xh = x.t.heads(heads, dim, 2 * dim);  // strided heads
  const std::vector<float> before = x.mem;
  be_->rope(xh, table, pos0);
  for (size_t t = 0; t < T; ++t)
    for (size_t h = 0; h < heads; ++h) {
      const float* o = before.data() + t * x.t.pitch() + h * 2 * dim;
      const float* v = xh.vec(t, h);
      for (size_t i = 0; i < half; ++i) {
        const double c = cs.at(pos0 + t, i), s = sn.at(pos0 + t, i);
        ASSERT_NEAR(v[i], o[i] * c - o[i + half] * s, 1e-6);
        ASSERT_NEAR(v[i + half], o[i + half] * c + o[i] * s, 1e-6);
      }
      for (size_t i = 2 * half; i < 2 * dim; ++i) ASSERT_EQ(v[i], o[i]) << "past the rotary dims";
    }
}

TEST_P(BackendOps, CausalAttentionWithGqaOverTheCache) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t nh = 4, nkv = 2, hd = 16, T = 5, cap = 12;
  const int pos0 = 3;
  for (bool gated : {false, true}) {
    HostTensor q(T, nh * hd), k(T, nkv * hd), v(T, nkv * hd), g(T, nh * hd), out(T, nh * hd);
    q.randomize(rng_);
    k.randomize(rng_);
    v.randomize(rng_);
    g.randomize(rng_, -3, 3);
    HostTensor K(cap, nkv * hd, 0), V(cap, nkv * hd, 0);
    K.randomize(rng_);  // positions [0, pos0) hold an earlier chunk; the rest is junk
    V.randomize(rng_);
    KvCache cache{K.t, V.t};
    AttentionArgs a;
    a.q = q.t.heads(nh, hd, hd);
    a.k = k.t.heads(nkv, hd, hd);
    a.v = v.t.heads(nkv, hd, hd);
    if (gated) a.gate = g.t.heads(nh, hd, hd);
    a.cache = &cache;
    a.pos0 = pos0;
    a.scale = 0.25f;
    a.out = out.t;
    be_->attention(a);
    for (size_t t = 0; t < T; ++t)
      for (size_t d = 0; d < nkv * hd; ++d) {
        ASSERT_EQ(K.at(pos0 + t, d), k.at(t, d)) << "key not appended";
        ASSERT_EQ(V.at(pos0 + t, d), v.at(t, d)) << "value not appended";
      }
    for (size_t t = 0; t < T; ++t)
      for (size_t h = 0; h < nh; ++h) {
        const size_t kv = h / (nh / nkv), len = pos0 + t + 1;
        const std::vector<double> ref =
            reference_attention(&q.at(t, h * hd), &K.at(0, kv * hd), K.t.pitch(), &V.at(0, kv * hd),
                                V.t.pitch(), len, hd, hd, 0.25);
        for (size_t d = 0; d < hd; ++d) {
          double o = ref[d];
          if (gated) o *= sigmoid(g.at(t, h * hd + d));
          ASSERT_NEAR(out.at(t, h * hd + d), o, 1e-5) << t << "," << h << "," << d;
        }
      }
  }
}

// MLA's decode form: one kv head whose keys are [latent | rope key] (dk = L + R) and whose
// values are the latent part of the same cache rows (dv = L, v a column view of k).
TEST_P(BackendOps, AttentionWithValuesNarrowerThanKeysSharingTheCache) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t nh = 3, L = 12, R = 4, dk = L + R, T = 4, cap = 9;
  const int pos0 = 2;
  HostTensor q(T, nh * dk), kv(T, dk), out(T, nh * L);
  q.randomize(rng_);
  kv.randomize(rng_);
  HostTensor K(cap, dk, 0);
  K.randomize(rng_);  // positions [0, pos0): an earlier chunk
  KvCache cache{K.t, K.t.cols_view(0, L)};
  AttentionArgs a;
  a.q = q.t.heads(nh, dk, dk);
  a.k = kv.t.heads(1, dk, dk);
  a.v = kv.t.cols_view(0, L).heads(1, L, L);
  a.cache = &cache;
  a.pos0 = pos0;
  a.scale = 0.3f;
  a.out = out.t;
  be_->attention(a);
  for (size_t t = 0; t < T; ++t)
    for (size_t d = 0; d < dk; ++d) ASSERT_EQ(K.at(pos0 + t, d), kv.at(t, d)) << "not appended";
  for (size_t t = 0; t < T; ++t)
    for (size_t h = 0; h < nh; ++h) {
      const std::vector<double> ref =
          reference_attention(&q.at(t, h * dk), &K.at(0, 0), K.t.pitch(), &K.at(0, 0), K.t.pitch(),
                              pos0 + t + 1, dk, L, 0.3);
      for (size_t d = 0; d < L; ++d)
        ASSERT_NEAR(out.at(t, h * L + d), ref[d], 1e-5) << t << "," << h << "," << d;
    }
}

TEST_P(BackendOps, HeadMatmulAppliesEachHeadsBlockOfRows) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t heads = 5, C = 64, R = 24;
  for (QuantFormat f :
       {QuantFormat::f32(), QuantFormat::bf16(), QuantFormat::q8_0(), QuantFormat::q4()}) {
    for (size_t T : {1, 7}) {
      SCOPED_TRACE(format_name(f) + ", T=" + std::to_string(T));
      RandomMatrix W(f, heads * R, C, rng_);
      // X: heads of C inside wider rows (pitch C + 8, as MLA reads q_nope out of [nope | rope]).
      HostTensor X(T, heads * (C + 8)), Y(T, heads * (R + 2));
      X.randomize(rng_);
      const Tensor Xh = X.t.heads(heads, C, C + 8), Yh = Y.t.heads(heads, R, R + 2);
      be_->head_matmul(Xh, W.view, Yh);
      for (size_t t = 0; t < T; ++t)
        for (size_t h = 0; h < heads; ++h) {
          const Reference ref = reference(W.view.row_slice(h * R, R), Xh.vec(t, h));
          for (size_t r = 0; r < R; ++r)
            ASSERT_NEAR(Yh.vec(t, h)[r], ref.y[r], ref.tol[r]) << t << "," << h << "," << r;
          for (size_t r = R; r < R + 2 && h + 1 < heads; ++r)
            ASSERT_TRUE(std::isnan(Y.at(t, h * (R + 2) + r))) << "wrote between heads";
        }
    }
  }
}

TEST_P(BackendOps, CopyBetweenStridedHeads) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  HostTensor src(3, 4 * 10), dst(3, 4 * 7);
  src.randomize(rng_);
  const Tensor s = src.t.cols_view(6, 34).heads(4, 4, 10),
               d = dst.t.cols_view(3, 25).heads(4, 4, 7);
  be_->copy(s, d);
  std::vector<bool> written(28, false);
  for (size_t h = 0; h < 4; ++h)
    for (size_t i = 0; i < 4; ++i) written[3 + h * 7 + i] = true;
  for (size_t r = 0; r < 3; ++r)
    for (size_t c = 0; c < 28; ++c) {
      if (!written[c]) {
        ASSERT_TRUE(std::isnan(dst.at(r, c))) << "wrote outside the heads at " << c;
        continue;
      }
      const size_t h = (c - 3) / 7, i = (c - 3) % 7;
      ASSERT_EQ(dst.at(r, c), src.at(r, 6 + h * 10 + i));
    }
  HostTensor a(4, 9), b(4, 9, 5);
  a.randomize(rng_);
  be_->copy(a.t, b.t);
  for (size_t r = 0; r < 4; ++r)
    for (size_t c = 0; c < 9; ++c) ASSERT_EQ(b.at(r, c), a.at(r, c));
}

TEST_P(BackendOps, CausalConvWithSiluCarriesItsState) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t C = 10, K = 4, T = 6;
  HostTensor x(T, C), y(T, C), state(C, K - 1, 0);
  x.randomize(rng_);
  state.randomize(rng_);
  const std::vector<float> w = random_vector(C * K, rng_);
  const std::vector<float> st0 = state.mem;
  be_->conv1d_silu(x.t, w.data(), K, state.t, y.t);
  for (size_t c = 0; c < C; ++c) {
    std::vector<double> u(st0.begin() + c * (K - 1), st0.begin() + (c + 1) * (K - 1));
    for (size_t t = 0; t < T; ++t) u.push_back(x.at(t, c));
    for (size_t t = 0; t < T; ++t) {
      double acc = 0;
      for (size_t j = 0; j < K; ++j) acc += w[c * K + j] * u[t + j];
      ASSERT_NEAR(y.at(t, c), silu(acc), 1e-5) << t << "," << c;
    }
    for (size_t j = 0; j < K - 1; ++j) ASSERT_EQ(state.at(c, j), float(u[T + j])) << "state";
  }
}

TEST_P(BackendOps, GatedDeltaRuleMatchesTheRecurrence) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t nk = 2, nv = 4, dk = 8, dv = 6, T = 5;
  HostTensor q(T, nk * dk), k(T, nk * dk), v(T, nv * dv), a(T, nv), b(T, nv), out(T, nv * dv);
  HostTensor S(nv, dk * dv, 0);
  for (HostTensor* h : {&q, &k, &v, &a, &b, &S}) h->randomize(rng_);
  const std::vector<float> A_log = random_vector(nv, rng_), dt = random_vector(nv, rng_);
  const std::vector<float> q0 = q.mem, k0 = k.mem, S0 = S.mem;
  DeltaNetState state{Tensor{}, S.t};
  DeltaRuleArgs d;
  d.q = q.t.heads(nk, dk, dk);
  d.k = k.t.heads(nk, dk, dk);
  d.v = v.t.heads(nv, dv, dv);
  d.a = a.t;
  d.b = b.t;
  d.A_log = A_log.data();
  d.dt_bias = dt.data();
  d.state = &state;
  d.out = out.t.heads(nv, dv, dv);
  be_->gated_delta_rule(d);
  for (size_t h = 0; h < nv; ++h) {
    const size_t kh = h / (nv / nk);
    std::vector<double> M(S0.begin() + h * S.t.pitch(), S0.begin() + h * S.t.pitch() + dk * dv);
    for (size_t t = 0; t < T; ++t) {
      std::vector<double> qq(dk), kk(dk);
      double nq = 0, nkk = 0;
      for (size_t i = 0; i < dk; ++i) {
        qq[i] = q0[t * q.t.pitch() + kh * dk + i];
        kk[i] = k0[t * k.t.pitch() + kh * dk + i];
        nq += qq[i] * qq[i];
        nkk += kk[i] * kk[i];
      }
      for (size_t i = 0; i < dk; ++i) {
        qq[i] /= std::sqrt(nq + 1e-6) * std::sqrt(double(dk));
        kk[i] /= std::sqrt(nkk + 1e-6);
      }
      const double beta = sigmoid(b.at(t, h));
      const double decay = std::exp(-std::exp(A_log[h]) * softplus(a.at(t, h) + dt[h]));
      std::vector<double> mem(dv, 0.0);
      for (size_t i = 0; i < dk; ++i)
        for (size_t j = 0; j < dv; ++j) mem[j] += (M[i * dv + j] *= decay) * kk[i];
      for (size_t j = 0; j < dv; ++j) {
        const double delta = (v.at(t, h * dv + j) - mem[j]) * beta;
        for (size_t i = 0; i < dk; ++i) M[i * dv + j] += kk[i] * delta;
      }
      for (size_t j = 0; j < dv; ++j) {
        double o = 0;
        for (size_t i = 0; i < dk; ++i) o += M[i * dv + j] * qq[i];
        ASSERT_NEAR(out.at(t, h * dv + j), o, 1e-5) << "t " << t << " head " << h;
      }
    }
    for (size_t e = 0; e < dk * dv; ++e) ASSERT_NEAR(S.t.row(h)[e], M[e], 1e-5) << "state";
  }
}

TEST_P(BackendOps, GatedRmsNorm) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t T = 3, heads = 4, dim = 16;
  HostTensor x(T, heads * dim), z(T, heads * 2 * dim), y(T, heads * dim);
  x.randomize(rng_);
  z.randomize(rng_, -4, 4);
  const std::vector<float> w = random_vector(dim, rng_);
  const Tensor zh = z.t.heads(heads, dim, 2 * dim);
  be_->rmsnorm_gated(x.t.heads(heads, dim, dim), zh, w.data(), 1e-6f, y.t.heads(heads, dim, dim));
  for (size_t t = 0; t < T; ++t)
    for (size_t h = 0; h < heads; ++h) {
      double ss = 0;
      for (size_t d = 0; d < dim; ++d) ss += double(x.at(t, h * dim + d)) * x.at(t, h * dim + d);
      for (size_t d = 0; d < dim; ++d) {
        const double want =
            x.at(t, h * dim + d) / std::sqrt(ss / dim + 1e-6) * w[d] * silu(zh.vec(t, h)[d]);
        ASSERT_NEAR(y.at(t, h * dim + d), want, 1e-5 * std::fabs(want) + 1e-6);
      }
    }
}

TEST_P(BackendOps, SoftmaxTopKRouting) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t T = 6, E = 16, K = 4;
  for (bool norm : {false, true}) {
    HostTensor logits(T, E);
    logits.randomize(rng_, -4, 4);
    logits.at(2, 3) = logits.at(2, 9) = 5.0f;  // a tie: the lower index ranks first
    std::vector<int32_t> ids(T * K, -1);
    std::vector<float> wts(T * K, kNaN);
    be_->route(logits.t, {RouterKind::SoftmaxTopK, int(K), norm}, {ids.data(), wts.data(), K});
    for (size_t t = 0; t < T; ++t) {
      std::vector<double> p(E);
      double mx = -1e300, sum = 0;
      for (size_t e = 0; e < E; ++e) mx = std::max(mx, double(logits.at(t, e)));
      for (size_t e = 0; e < E; ++e) sum += (p[e] = std::exp(logits.at(t, e) - mx));
      std::vector<int> order(E);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return p[x] > p[y]; });
      double top = 0;
      for (size_t i = 0; i < K; ++i) top += p[order[i]] / sum;
      for (size_t i = 0; i < K; ++i) {
        ASSERT_EQ(ids[t * K + i], order[i]) << "row " << t << " rank " << i;
        const double want = p[order[i]] / sum / (norm ? top : 1.0);
        ASSERT_NEAR(wts[t * K + i], want, 1e-6);
      }
    }
  }
}

// noaux_tc against a float64 reference of transformers' DeepseekV3TopkRouter: sigmoid scores,
// choice = score + bias, groups ranked by the sum of their two best choices, top-k among the
// kept groups' experts, weights from the unbiased scores.
TEST_P(BackendOps, SigmoidGroupLimitedRouting) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t T = 7, E = 16;
  struct Case {
    int groups, keep, k;
    bool norm;
    float scale;
  };
  for (const Case& cs : {Case{4, 2, 4, true, 2.5f}, Case{1, 1, 3, false, 1.0f},
                         Case{8, 3, 6, true, 1.0f}, Case{2, 1, 8, true, 0.5f}}) {
    SCOPED_TRACE("groups " + std::to_string(cs.groups) + " keep " + std::to_string(cs.keep));
    HostTensor logits(T, E);
    logits.randomize(rng_, -4, 4);
    std::vector<float> bias = random_vector(E, rng_);
    for (float& b : bias) b *= 0.3f;  // negative biases too: kept experts may choose below 0
    std::vector<int32_t> ids(T * cs.k, -1);
    std::vector<float> wts(T * cs.k, kNaN);
    RouterSpec spec;
    spec.kind = RouterKind::SigmoidGroupTopK;
    spec.top_k = cs.k;
    spec.norm_topk_prob = cs.norm;
    spec.n_group = cs.groups;
    spec.topk_group = cs.keep;
    spec.routed_scaling_factor = cs.scale;
    spec.bias = bias.data();
    be_->route(logits.t, spec, {ids.data(), wts.data(), size_t(cs.k)});
    const size_t per = E / cs.groups;
    for (size_t t = 0; t < T; ++t) {
      std::vector<double> sc(E), choice(E), gs(cs.groups);
      for (size_t e = 0; e < E; ++e) {
        sc[e] = sigmoid(logits.at(t, e));
        choice[e] = sc[e] + bias[e];
      }
      for (int g = 0; g < cs.groups; ++g) {
        std::vector<double> m(choice.begin() + g * per, choice.begin() + (g + 1) * per);
        std::sort(m.rbegin(), m.rend());
        gs[g] = m[0] + m[1];
      }
      std::vector<int> gorder(cs.groups);
      std::iota(gorder.begin(), gorder.end(), 0);
      std::stable_sort(gorder.begin(), gorder.end(), [&](int x, int y) { return gs[x] > gs[y]; });
      std::vector<int> cand;
      for (size_t e = 0; e < E; ++e)
        if (std::find(gorder.begin(), gorder.begin() + cs.keep, int(e / per)) !=
            gorder.begin() + cs.keep)
          cand.push_back(int(e));
      std::stable_sort(cand.begin(), cand.end(),
                       [&](int x, int y) { return choice[x] > choice[y]; });
      double sum = 0;
      for (int i = 0; i < cs.k; ++i) sum += sc[cand[i]];
      for (int i = 0; i < cs.k; ++i) {
        ASSERT_EQ(ids[t * cs.k + i], cand[i]) << "row " << t << " rank " << i;
        const double want = sc[cand[i]] / (cs.norm ? sum + 1e-20 : 1.0) * cs.scale;
        ASSERT_NEAR(wts[t * cs.k + i], want, 1e-6 * cs.scale);
      }
    }
  }
}

TEST_P(BackendOps, GroupedExpertFfnWritesOnlyItsSlots) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t H = 64, I = 32, T = 4, S = 3;
  for (QuantFormat f : {QuantFormat::bf16(), QuantFormat::q8_0(), QuantFormat::affine(4, 32)}) {
    SCOPED_TRACE(format_name(f));
    struct Expert {
      RandomMatrix gate, up, down;
    };
    std::vector<Expert> ex;
    for (int e = 0; e < 3; ++e)
      ex.push_back(
          {RandomMatrix(f, I, H, rng_), RandomMatrix(f, I, H, rng_), RandomMatrix(f, H, I, rng_)});
    HostTensor X(T, H), slots(T * S, H);
    X.randomize(rng_);
    // Expert 0: rows 0, 2, 3 -> slots 0, 6, 9; expert 1: row 1 -> slot 4; expert 2: rows 0, 1
    // -> slots 2, 5 (rows shared between experts; slots 1, 3, 7, 8, 10, 11 untouched).
    const std::vector<std::vector<int32_t>> in = {{0, 2, 3}, {1}, {0, 1}},
                                            out = {{0, 6, 9}, {4}, {2, 5}};
    std::vector<ExpertTask> tasks;
    for (int e = 0; e < 3; ++e)
      tasks.push_back({{ex[e].gate.view, ex[e].up.view, ex[e].down.view},
                       I,
                       in[e].data(),
                       out[e].data(),
                       in[e].size(),
                       nullptr});
    be_->expert_ffn(X.t, tasks, slots.t);
    std::vector<bool> written(T * S, false);
    for (int e = 0; e < 3; ++e)
      for (size_t j = 0; j < in[e].size(); ++j) {
        const float* x = X.t.row(in[e][j]);
        std::vector<double> h(I);
        for (size_t i = 0; i < I; ++i) {
          double g = 0, u = 0;
          for (size_t c = 0; c < H; ++c) {
            g += ref_value(ex[e].gate.view, i, c) * x[c];
            u += ref_value(ex[e].up.view, i, c) * x[c];
          }
          h[i] = silu(g) * u;
        }
        written[out[e][j]] = true;
        for (size_t r = 0; r < H; ++r) {
          double y = 0, mag = 0;
          for (size_t i = 0; i < I; ++i) {
            const double d = ref_value(ex[e].down.view, r, i);
            y += d * h[i];
            mag += std::fabs(d * h[i]);
          }
          ASSERT_NEAR(slots.at(out[e][j], r), y, 1e-4 * mag + 1e-6) << "expert " << e;
        }
      }
    for (size_t s = 0; s < T * S; ++s)
      if (!written[s]) {
        ASSERT_TRUE(std::isnan(slots.at(s, 0))) << "slot " << s << " written";
      }
  }
}

TEST_P(BackendOps, CombineAddsWeightedSlotsInOrder) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const size_t T = 3, S = 3, K = 2, H = 40;
  for (bool gate : {false, true}) {
    HostTensor slots(T * S, H), out(T, H), g(T, 1);
    slots.randomize(rng_);
    out.randomize(rng_);
    g.randomize(rng_, -3, 3);
    const std::vector<float> w = random_vector(T * K, rng_), before = out.mem;
    CombineArgs a;
    a.slots = slots.t;
    a.slots_per_token = S;
    a.routed = w.data();
    a.k = K;
    if (gate) a.gate = g.t;
    a.out = out.t;
    be_->combine(a);
    for (size_t t = 0; t < T; ++t)
      for (size_t c = 0; c < H; ++c) {
        double want = before[t * out.t.pitch() + c];
        for (size_t s = 0; s < S; ++s)
          want +=
              (s < K ? w[t * K + s] : (gate ? sigmoid(g.at(t, 0)) : 1.0)) * slots.at(t * S + s, c);
        ASSERT_NEAR(out.at(t, c), want, 1e-5);
      }
  }
}

TEST_P(BackendOps, MemoryAndCopies) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  auto buf = be_->allocate(5 * 16 * sizeof(float), "test");
  ASSERT_EQ(reinterpret_cast<uintptr_t>(buf->data()) % 64, 0u);
  const Tensor t = Tensor::matrix(buf->data(), 5, 10, 16, be_->memory());
  const std::vector<float> src = random_vector(5 * 12, rng_);
  be_->upload(src.data(), 12, t);
  std::vector<float> back(5 * 11, kNaN);
  be_->download(t, back.data(), 11);
  for (size_t r = 0; r < 5; ++r)
    for (size_t c = 0; c < 10; ++c) ASSERT_EQ(back[r * 11 + c], src[r * 12 + c]);
  be_->fill(t.rows_view(1, 2), 2.5f);
  be_->download(t, back.data(), 11);
  for (size_t r = 0; r < 5; ++r)
    for (size_t c = 0; c < 10; ++c)
      ASSERT_EQ(back[r * 11 + c], r == 1 || r == 2 ? 2.5f : src[r * 12 + c]);
  EXPECT_THROW(be_->allocate(size_t{1} << 62, "an impossible buffer"), Error);
}

// The greedy pick of each row: the largest value, NaN never counting, the lowest index on ties
// (-0 and +0 equal), 0 when every value is NaN; and whether the row is all finite.
// kRows rows of kCols uniform values in [-10, 10) in backend memory (and on the host), each row's
// maximum 11 placed twice: at 4000 - r and at 4990.
struct WideRows {
  static constexpr size_t kRows = 3, kCols = 5000;
  std::vector<float> host;
  std::unique_ptr<BackendBuffer> buf;
  Tensor t;
  WideRows(Backend& be, std::mt19937& rng) : host(kRows * kCols) {
    std::uniform_real_distribution<float> u(-10, 10);
    for (float& v : host) v = u(rng);
    for (size_t r = 0; r < kRows; ++r) host[r * kCols + 4000 - r] = host[r * kCols + 4990] = 11.0f;
    buf = be.allocate(host.size() * sizeof(float), "wide rows");
    t = Tensor::matrix(buf->data(), kRows, kCols, kCols, be.memory());
    be.upload(host.data(), kCols, t);
  }
};

TEST_P(BackendOps, ArgmaxRowsIgnoresNanAndTakesTheLowestIndexOfTies) {
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  const std::vector<std::vector<float>> rows = {
      {1, 3, 3, 2},      {nan, 2, 5, nan, 5}, {nan, nan, nan},    {nan, -inf, -inf},
      {-1, -0.0f, 0.0f}, {1, inf, 2, inf},    {-inf, -inf, -inf}, {-5, -2, -3}};
  const std::vector<int32_t> want_id = {1, 2, 0, 1, 1, 1, 0, 1};
  const std::vector<uint8_t> want_finite = {1, 0, 0, 0, 1, 0, 0, 1};
  const size_t pitch = 8;
  auto buf = be_->allocate(rows.size() * pitch * sizeof(float), "argmax rows");
  for (size_t r = 0; r < rows.size(); ++r) {
    const Tensor one = Tensor::matrix(static_cast<float*>(buf->data()) + r * pitch, 1,
                                      rows[r].size(), pitch, be_->memory());
    be_->upload(rows[r].data(), rows[r].size(), one);
    std::vector<int32_t> id(1, -7);
    std::vector<uint8_t> finite(1, 7);
    be_->argmax_rows(one, id, finite);
    EXPECT_EQ(id[0], want_id[r]) << "row " << r;
    EXPECT_EQ(finite[0], want_finite[r]) << "row " << r;
  }
  // Many rows at once, wide and random, the maximum placed twice.
  const WideRows wr(*be_, rng_);
  const size_t R = WideRows::kRows;
  const Tensor& w = wr.t;
  std::vector<int32_t> id(R, -7);
  std::vector<uint8_t> finite(R, 7);
  be_->argmax_rows(w, id, finite);
  for (size_t r = 0; r < R; ++r) {
    EXPECT_EQ(id[r], int32_t(4000 - r)) << "row " << r;
    EXPECT_EQ(finite[r], 1) << "row " << r;
  }
}

// top_k_rows: core/top_k.hpp's k best of each row (NaN as -inf, ties to the lower index) and the
// rows' finiteness, over rows of edge cases and wide random rows with a tie at the top.
TEST_P(BackendOps, TopKRowsRankNanAsMinusInfinityAndTiesByIndex) {
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  const std::vector<std::vector<float>> rows = {
      {1, 3, 3, 2}, {nan, 2, 5, nan, 5}, {nan, nan, nan}, {-1, -0.0f, 0.0f}, {1, inf, 2, -inf}};
  const std::vector<std::vector<int>> want_ids = {
      {1, 2, 3}, {2, 4, 1}, {0, 1, 2}, {1, 2, 0}, {1, 2, 0}};
  const std::vector<uint8_t> want_finite = {1, 0, 0, 1, 0};
  const size_t pitch = 8, k = 3;
  auto buf = be_->allocate(rows.size() * pitch * sizeof(float), "top-k rows");
  for (size_t r = 0; r < rows.size(); ++r) {
    const Tensor one = Tensor::matrix(static_cast<float*>(buf->data()) + r * pitch, 1,
                                      rows[r].size(), pitch, be_->memory());
    be_->upload(rows[r].data(), rows[r].size(), one);
    std::vector<TopEntry> best(k, TopEntry{-7, 7.0f});
    std::vector<uint8_t> finite(1, 7);
    be_->top_k_rows(one, k, best, finite);
    for (size_t i = 0; i < k; ++i) EXPECT_EQ(best[i].id, want_ids[r][i]) << "row " << r;
    EXPECT_EQ(finite[0], want_finite[r]) << "row " << r;
  }
  // Many rows at once, wide and random, the maximum placed twice.
  const WideRows wr(*be_, rng_);
  const size_t R = WideRows::kRows, n = WideRows::kCols;
  const Tensor& w = wr.t;
  const std::vector<float>& wide = wr.host;
  const size_t kk = 40;
  std::vector<TopEntry> best(R * kk), want;
  std::vector<uint8_t> finite(R, 7);
  be_->top_k_rows(w, kk, best, finite);
  for (size_t r = 0; r < R; ++r) {
    top_k(std::span<const float>(wide.data() + r * n, n), kk, want);
    EXPECT_EQ(best[r * kk].id, int(4000 - r)) << "row " << r;
    EXPECT_EQ(best[r * kk + 1].id, 4990) << "row " << r;
    for (size_t i = 0; i < kk; ++i) {
      EXPECT_EQ(best[r * kk + i].id, want[i].id) << "row " << r << " rank " << i;
      EXPECT_EQ(best[r * kk + i].value, want[i].value) << "row " << r << " rank " << i;
    }
    EXPECT_EQ(finite[r], 1) << "row " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendOps, testing::Values(std::string("cpu")));

}  // namespace
}  // namespace moeflux::test
