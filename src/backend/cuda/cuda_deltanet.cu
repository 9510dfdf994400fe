// CudaBackend::gated_delta_rule: the Gated DeltaNet recurrence (backend.hpp states the math).
//
// q and k are l2-normalised in place first (q also scaled by 1/sqrt(dk)), one block per
// (token, key head). The recurrence runs one block per value head, one thread per value column
// j: thread j owns column S[:, j] of the head's state (in device memory, [dk][dv] row-major),
// so every update is a per-column loop with no communication beyond the token's q, k in shared
// memory:
//   S <- decay S;  kv_j = Σ_i S[i][j] k_i;  δ_j = β (v_j - kv_j);  S[i][j] += k_i δ_j;
//   out_j = Σ_i S[i][j] q_i
// Tokens are processed in order (the recurrence is sequential in t).
#include <cmath>

#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_check.hpp"

namespace moeflux::cuda {

namespace {

constexpr int kMaxKeyDim = 512;

// v <- v / max(||v||, eps') * extra  with the CPU's convention: v / sqrt(Σ v^2 + eps).
__global__ void l2norm_kernel(float* base, size_t s0, size_t s1, int heads, int dim, float eps,
                              float extra) {
  await_inputs();
  const int t = blockIdx.x / heads, h = blockIdx.x % heads;
  float* v = base + t * s0 + h * s1;
  float ss = 0.0f;
  for (int d = threadIdx.x; d < dim; d += 32) ss += v[d] * v[d];
  const float inv = rsqrtf(warp_sum(ss) + eps) * extra;
  for (int d = threadIdx.x; d < dim; d += 32) v[d] *= inv;
}

struct DeltaParams {
  const float *q, *k, *v, *a, *b;
  size_t q0, q1, v0, v1, a0, b0;
  const float *A_log, *dt_bias;
  float* S;
  size_t S_pitch;
  float* out;
  size_t o0, o1;
  int T, dk, dv, ratio;
};

__global__ void delta_rule_kernel(DeltaParams p) {
  await_inputs();
  const int h = blockIdx.x, j = threadIdx.x, kh = h / p.ratio;
  __shared__ float qs[kMaxKeyDim], ks[kMaxKeyDim];
  __shared__ float decay_beta[2];
  float* S = p.S + h * p.S_pitch;  // S[i * dv + j]
  const float A = expf(p.A_log[h]);
  for (int t = 0; t < p.T; ++t) {
    __syncthreads();  // the previous token's q, k are no longer read
    for (int i = threadIdx.x; i < p.dk; i += blockDim.x) {
      qs[i] = p.q[t * p.q0 + kh * p.q1 + i];
      ks[i] = p.k[t * p.q0 + kh * p.q1 + i];
    }
    if (threadIdx.x == 0) {
      decay_beta[0] = expf(-A * softplusf_(p.a[t * p.a0 + h] + p.dt_bias[h]));
      decay_beta[1] = sigmoidf_(p.b[t * p.b0 + h]);
    }
    __syncthreads();
    if (j >= p.dv) continue;
    const float decay = decay_beta[0], beta = decay_beta[1];
    float kv = 0.0f;
    for (int i = 0; i < p.dk; ++i) {
      const float s = S[i * p.dv + j] * decay;
      S[i * p.dv + j] = s;
      kv = fmaf(s, ks[i], kv);
    }
    const float delta = (p.v[t * p.v0 + h * p.v1 + j] - kv) * beta;
    float o = 0.0f;
    for (int i = 0; i < p.dk; ++i) {
      const float s = fmaf(ks[i], delta, S[i * p.dv + j]);
      S[i * p.dv + j] = s;
      o = fmaf(s, qs[i], o);
    }
    p.out[t * p.o0 + h * p.o1 + j] = o;
  }
}

}  // namespace

void CudaBackend::gated_delta_rule(const DeltaRuleArgs& a) {
  const OpTimer timer(*this, "delta_rule");
  MF_ASSERT(a.q.rank == 3 && a.k.rank == 3 && a.v.rank == 3 && a.state != nullptr);
  const size_t T = a.q.shape[0], nk = a.q.shape[1], dk = a.q.shape[2];
  const size_t nv = a.v.shape[1], dv = a.v.shape[2];
  MF_ASSERT(a.k.shape == a.q.shape && a.v.shape[0] == T && nv % nk == 0);
  MF_ASSERT(a.k.stride == a.q.stride);
  MF_ASSERT(a.a.rank == 2 && a.b.rank == 2 && a.a.rows() == T && a.a.shape[1] == nv &&
            a.b.rows() == T && a.b.shape[1] == nv);
  MF_ASSERT(a.out.rank == 3 && a.out.shape == a.v.shape);
  MF_ASSERT(a.state->S.rows() == nv && a.state->S.shape[1] == dk * dv);
  MF_ASSERT(dk <= size_t(kMaxKeyDim) && dv <= 1024);
  if (T == 0) return;
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  l2norm_kernel<<<static_cast<unsigned>(T * nk), 32, 0, stream_>>>(
      a.q.f32(), a.q.stride[0], a.q.stride[1], int(nk), int(dk), 1e-6f, q_scale);
  l2norm_kernel<<<static_cast<unsigned>(T * nk), 32, 0, stream_>>>(
      a.k.f32(), a.k.stride[0], a.k.stride[1], int(nk), int(dk), 1e-6f, 1.0f);
  check_launch("delta rule (l2 norm)");
  DeltaParams p;
  p.q = a.q.f32();
  p.k = a.k.f32();
  p.v = a.v.f32();
  p.a = a.a.f32();
  p.b = a.b.f32();
  p.q0 = a.q.stride[0];
  p.q1 = a.q.stride[1];
  p.v0 = a.v.stride[0];
  p.v1 = a.v.stride[1];
  p.a0 = a.a.pitch();
  p.b0 = a.b.pitch();
  p.A_log = a.A_log;
  p.dt_bias = a.dt_bias;
  p.S = a.state->S.f32();
  p.S_pitch = a.state->S.pitch();
  p.out = a.out.f32();
  p.o0 = a.out.stride[0];
  p.o1 = a.out.stride[1];
  p.T = int(T);
  p.dk = int(dk);
  p.dv = int(dv);
  p.ratio = int(nv / nk);
  const unsigned threads = static_cast<unsigned>((dv + 31) / 32 * 32);
  delta_rule_kernel<<<static_cast<unsigned>(nv), threads, 0, stream_>>>(p);
  check_launch("delta rule");
}

}  // namespace moeflux::cuda
