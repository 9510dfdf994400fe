// CpuBackend: the Gated DeltaNet ops (qwen3_5_moe linear attention): causal depthwise conv1d +
// SiLU with its state, the gated delta rule recurrence, and the gated RMSNorm of its output.
#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_backend.hpp"
#include "backend/cpu/ops.hpp"
#include "backend/cpu/vec.hpp"

namespace moeflux {

void CpuBackend::conv1d_silu(const Tensor& x, const float* w, size_t kernel, const Tensor& state,
                             const Tensor& y) {
  constexpr size_t kMaxKernel = 16;
  MF_ASSERT(kernel >= 1 && kernel <= kMaxKernel && w != nullptr);
  MF_ASSERT(x.rank == 2 && y.rank == 2 && x.rows() == y.rows() && x.shape[1] == y.shape[1]);
  const size_t T = x.rows(), C = x.shape[1], S = kernel - 1;
  MF_ASSERT(state.rank == 2 && state.rows() == C && state.shape[1] == S);
  pool_.parallel_for(
      C,
      [&](size_t cb, size_t ce) {
        for (size_t c = cb; c < ce; ++c) {
          const float* wc = w + c * kernel;
          float* st = state.row(c);
          // u(i): the channel's input stream, the S state inputs followed by x's rows.
          auto u = [&](size_t i) { return i < S ? st[i] : x.row(i - S)[c]; };
          for (size_t t = 0; t < T; ++t) {
            float acc = 0.0f;
            for (size_t j = 0; j < kernel; ++j) acc += wc[j] * u(t + j);
            y.row(t)[c] = cpu::silu(acc);
          }
          float next[kMaxKernel];
          for (size_t j = 0; j < S; ++j) next[j] = u(T + j);
          std::copy(next, next + S, st);
        }
      },
      std::max<size_t>(1, 8192 / (T * kernel + 1)));
}

void CpuBackend::gated_delta_rule(const DeltaRuleArgs& a) {
  MF_ASSERT(a.q.rank == 3 && a.k.rank == 3 && a.v.rank == 3 && a.state != nullptr);
  const size_t T = a.q.shape[0], nk = a.q.shape[1], dk = a.q.shape[2];
  const size_t nv = a.v.shape[1], dv = a.v.shape[2];
  MF_ASSERT(a.k.shape == a.q.shape && a.v.shape[0] == T && nv % nk == 0);
  MF_ASSERT(a.a.rank == 2 && a.b.rank == 2 && a.a.rows() == T && a.a.shape[1] == nv &&
            a.b.rows() == T && a.b.shape[1] == nv);
  MF_ASSERT(a.out.rank == 3 && a.out.shape == a.v.shape);
  MF_ASSERT(a.state->S.rows() == nv && a.state->S.shape[1] == dk * dv);
  // q, k: l2-normalised per (token, key head), q scaled by 1/sqrt(dk).
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  pool_.parallel_for(
      T * nk,
      [&](size_t b, size_t e) {
        for (size_t u = b; u < e; ++u) {
          float* q = a.q.vec(u / nk, u % nk);
          float* k = a.k.vec(u / nk, u % nk);
          cpu::l2norm(q, dk, 1e-6f);
          cpu::l2norm(k, dk, 1e-6f);
          cpu::scale(q_scale, q, dk);
        }
      },
      std::max<size_t>(1, 4096 / dk));
  // The recurrence, one value head per unit, tokens in order.
  const size_t ratio = nv / nk;
  pool_.parallel_for(
      nv,
      [&](size_t hb, size_t he) {
        thread_local std::vector<float> kv_mem;
        if (kv_mem.size() < dv) kv_mem.resize(dv);
        for (size_t h = hb; h < he; ++h) {
          float* S = a.state->S.row(h);  // S[i][j], i < dk keys, j < dv values
          const float A = std::exp(a.A_log[h]);
          for (size_t t = 0; t < T; ++t) {
            const float* q = a.q.vec(t, h / ratio);
            const float* k = a.k.vec(t, h / ratio);
            const float* v = a.v.vec(t, h);
            const float beta = cpu::sigmoid(a.b.row(t)[h]);
            const float decay = std::exp(-A * cpu::softplus(a.a.row(t)[h] + a.dt_bias[h]));
            // S <- decay S;  kv_mem = S^T k
            std::fill(kv_mem.begin(), kv_mem.begin() + dv, 0.0f);
            for (size_t i = 0; i < dk; ++i) {
              float* Si = S + i * dv;
              cpu::scale(decay, Si, dv);
              cpu::axpy(k[i], Si, kv_mem.data(), dv);
            }
            // delta = beta (v - kv_mem);  S <- S + k delta^T;  out = S^T q
            for (size_t j = 0; j < dv; ++j) kv_mem[j] = (v[j] - kv_mem[j]) * beta;
            float* o = a.out.vec(t, h);
            std::fill(o, o + dv, 0.0f);
            for (size_t i = 0; i < dk; ++i) {
              float* Si = S + i * dv;
              cpu::axpy(k[i], kv_mem.data(), Si, dv);
              cpu::axpy(q[i], Si, o, dv);
            }
          }
        }
      },
      std::max<size_t>(1, 16384 / (dk * dv * 4 * T)));
}

void CpuBackend::rmsnorm_gated(const Tensor& x, const Tensor& z, const float* w, float eps,
                               const Tensor& y) {
  MF_ASSERT(x.rank == 3 && z.rank == 3 && y.rank == 3 && x.shape == z.shape && x.shape == y.shape);
  const size_t heads = x.shape[1], dim = x.shape[2];
  pool_.parallel_for(
      x.shape[0] * heads,
      [&](size_t b, size_t e) {
        for (size_t u = b; u < e; ++u) {
          const size_t t = u / heads, h = u % heads;
          float* o = y.vec(t, h);
          cpu::rmsnorm(x.vec(t, h), w, o, dim, eps, /*zero_centered=*/false);
          const float* zz = z.vec(t, h);
          for (size_t d = 0; d < dim; ++d) o[d] *= cpu::silu(zz[d]);
        }
      },
      std::max<size_t>(1, 8192 / dim));
}

}  // namespace moeflux
