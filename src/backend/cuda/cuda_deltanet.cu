// CudaBackend::gated_delta_rule: the Gated DeltaNet recurrence (backend.hpp states the math).
//
// q and k are l2-normalised (q also scaled by 1/sqrt(dk)): by the recurrence's kernel as it
// reads each token's (decode: one launch in all), or in place first for the chunked form, one
// block per (token, key head). The two forms compute the same S and out:
//
// The recurrence (decode, short chunks): S's columns evolve independently given the token, so a
// block takes 32 value columns of one value head (lane = column j) and its warps split the
// column's dk rows, held in registers across the chunk's tokens (S, [dk][dv] row-major in device
// memory, is read and written once per call). Per token, with q, k in shared memory:
//   S <- decay S;  kv_j = Σ_i S[i][j] k_i;  δ_j = β (v_j - kv_j);  S[i][j] += k_i δ_j;
//   out_j = Σ_i S[i][j] q_i
// each Σ_i a per-warp partial sum, the warps' partials added in warp order. Tokens are processed
// in order (the recurrence is sequential in t).
//
// The chunked form (prompts of at least kChunkedFrom tokens): tokens in chunks of C = 64. Within
// a chunk (rows r, s < n), with g_r = log decay_r ≤ 0, γ_r = Σ_{m≤r} g_m (cumulative over the
// chunk) and S0 the state before the chunk, unrolling the recurrence gives
//   S_r = e^{γ_r} S0 + Σ_{s≤r} e^{γ_r-γ_s} k_s δ_s^T,   so
//   δ_r = β_r (v_r - e^{γ_r} S0^T k_r) - Σ_{s<r} A[r][s] δ_s,  A[r][s] = β_r e^{γ_r-γ_s} k_r·k_s,
// i.e. (I + A) δ = β V - (β e^{γ} K) S0. With Tm = (I + A)^{-1} (unit lower triangular):
//   δ = U - W S0,          U = Tm (β V),  W = Tm (β e^{γ} K)
//   out = (e^{γ} Q) S0 + P δ,            P[r][s] = e^{γ_r-γ_s} q_r·k_s  (s ≤ r; else 0)
//   S0 <- e^{γ_{n-1}} S0 + Kd^T δ,        Kd[s] = e^{γ_{n-1}-γ_s} k_s
// Only differences γ_r - γ_s ≤ 0 are exponentiated, so nothing overflows. Two kernels:
//   prepare: one block per (value head, chunk), all chunks at once (they do not depend on S):
//     A from the chunk's keys in shared memory, Tm by forward substitution in place (row r
//     needs rows < r of Tm), then U, W, e^{γ} Q, Kd^T, P and e^{γ_{n-1}} into a scratch record;
//   scan: one block per (value head, 32 value columns), chunks in order; the block's columns
//     of S stay in shared memory (S's columns evolve independently given δ's same columns).
// Both are plain fp32 arithmetic (no tensor cores): parity with the CPU's recurrence holds to
// rounding.
#include <atomic>
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
  float q_scale;  // 1 / sqrt(dk)
};

// The recurrence: blockIdx = (value head, 32 value columns); lane = column j, warp w holds rows
// i = w + kStepWarps m (m < R) of S's column j in registers.
constexpr int kStepWarps = 8;

template <int R>  // rows of S per thread: dk <= kStepWarps R
__global__ void __launch_bounds__(kStepWarps * 32) delta_rule_kernel(DeltaParams p) {
  await_inputs();
  const int h = blockIdx.x, kh = h / p.ratio, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int j = blockIdx.y * 32 + lane;
  const bool live = j < p.dv;
  __shared__ float qs[kMaxKeyDim], ks[kMaxKeyDim];
  __shared__ float part[2][kStepWarps][32];  // per-warp partial sums: kv, then out
  __shared__ float norms[2][kStepWarps];     // per-warp partial Σ q², Σ k²
  __shared__ float decay_beta[2];
  float* S = p.S + h * p.S_pitch;  // S[i * dv + j]
  float s[R];
#pragma unroll
  for (int m = 0; m < R; ++m) {
    const int i = warp + kStepWarps * m;
    s[m] = live && i < p.dk ? S[size_t(i) * p.dv + j] : 0.0f;
  }
  const float A = expf(p.A_log[h]);
  for (int t = 0; t < p.T; ++t) {
    for (int i = threadIdx.x; i < p.dk; i += blockDim.x) {
      qs[i] = p.q[t * p.q0 + kh * p.q1 + i];
      ks[i] = p.k[t * p.q0 + kh * p.q1 + i];
    }
    if (threadIdx.x == 0) {
      decay_beta[0] = expf(-A * softplusf_(p.a[t * p.a0 + h] + p.dt_bias[h]));
      decay_beta[1] = sigmoidf_(p.b[t * p.b0 + h]);
    }
    __syncthreads();
    // q, k l2-normalised here (q also scaled by 1/sqrt(dk)), v / sqrt(Σ v² + eps) as the CPU's;
    // the tensors in memory are left as they were (every block of the key head reads them).
    float sq = 0.0f, sk = 0.0f;
    for (int i = threadIdx.x; i < p.dk; i += blockDim.x) {
      sq = fmaf(qs[i], qs[i], sq);
      sk = fmaf(ks[i], ks[i], sk);
    }
    sq = warp_sum(sq);
    sk = warp_sum(sk);
    if (lane == 0) {
      norms[0][warp] = sq;
      norms[1][warp] = sk;
    }
    __syncthreads();
    sq = sk = 0.0f;
#pragma unroll
    for (int w = 0; w < kStepWarps; ++w) {
      sq += norms[0][w];
      sk += norms[1][w];
    }
    const float inv_q = rsqrtf(sq + 1e-6f) * p.q_scale, inv_k = rsqrtf(sk + 1e-6f);
    for (int i = threadIdx.x; i < p.dk; i += blockDim.x) {
      qs[i] *= inv_q;
      ks[i] *= inv_k;
    }
    __syncthreads();
    const float decay = decay_beta[0], beta = decay_beta[1];
    // S <- decay S;  kv_j = Σ_i S[i][j] k_i
    float kv = 0.0f;
#pragma unroll
    for (int m = 0; m < R; ++m) {
      const int i = warp + kStepWarps * m;
      s[m] *= decay;
      if (i < p.dk) kv = fmaf(s[m], ks[i], kv);
    }
    part[0][warp][lane] = kv;
    __syncthreads();
    kv = 0.0f;
#pragma unroll
    for (int w = 0; w < kStepWarps; ++w) kv += part[0][w][lane];
    // δ_j = β (v_j - kv_j);  S[i][j] += k_i δ_j;  out_j = Σ_i S[i][j] q_i
    const float delta = live ? (p.v[t * p.v0 + h * p.v1 + j] - kv) * beta : 0.0f;
    float o = 0.0f;
#pragma unroll
    for (int m = 0; m < R; ++m) {
      const int i = warp + kStepWarps * m;
      if (i < p.dk) {
        s[m] = fmaf(ks[i], delta, s[m]);
        o = fmaf(s[m], qs[i], o);
      }
    }
    part[1][warp][lane] = o;
    __syncthreads();
    if (warp == 0 && live) {
      o = 0.0f;
#pragma unroll
      for (int w = 0; w < kStepWarps; ++w) o += part[1][w][lane];
      p.out[t * p.o0 + h * p.o1 + j] = o;
    }
    __syncthreads();  // this token's q, k and partial sums are read before the next overwrites
  }
  if (live) {
#pragma unroll
    for (int m = 0; m < R; ++m) {
      const int i = warp + kStepWarps * m;
      if (i < p.dk) S[size_t(i) * p.dv + j] = s[m];
    }
  }
}

// ---- The chunked form ----

constexpr int kChunk = 64;              // tokens per chunk (the gate scan below takes 2 per lane)
constexpr int kChunkedFrom = 16;        // prompts of this many tokens take the chunked form
constexpr int kMaxChunkedKeyDim = 256;  // beyond: the recurrence (shared memory of prepare)
constexpr int kPrepareThreads = 256;    // at least kChunk (the substitution's row step)
constexpr int kScanCols = 32;           // value columns per scan block, one per lane
constexpr int kScanWarps = 8;
static_assert(kChunk == 64 && kPrepareThreads >= kChunk);

// One (value head, chunk) record of the prepare kernel's results, in floats. Every part starts
// 16-byte aligned (float4 reads): dkp = dk rounded up to 4; rows of W and e^{γ} Q are zero past
// dk. Records follow each other by head, then chunk.
struct ChunkRecord {
  int dk = 0, dkp = 0, dv = 0;
  __host__ __device__ size_t w() const { return 0; }                                  // [C][dkp]
  __host__ __device__ size_t qg() const { return size_t(kChunk) * dkp; }              // [C][dkp]
  __host__ __device__ size_t kdt() const { return qg() + size_t(kChunk) * dkp; }      // [dk][C]
  __host__ __device__ size_t u() const { return kdt() + size_t(dk) * kChunk; }        // [C][dv]
  __host__ __device__ size_t p() const { return u() + size_t(kChunk) * dv; }          // [C][C]
  __host__ __device__ size_t glast() const { return p() + size_t(kChunk) * kChunk; }  // [1]
  __host__ __device__ size_t floats() const { return glast() + 4; }
};

ChunkRecord chunk_record(int dk, int dv) {
  ChunkRecord r;
  r.dk = dk;
  r.dkp = (dk + 3) & ~3;
  r.dv = dv;
  return r;
}

// Shared memory of prepare: the chunk's keys [C][dk+1] (odd pitch: column reads are
// conflict-free), A / Tm [C][C+1], the substitution's row copy, γ, β and e^{γ_{n-1}-γ_s}.
size_t prepare_smem_bytes(int dk) {
  return sizeof(float) * (size_t(kChunk) * (dk + 1) + size_t(kChunk) * (kChunk + 1) + 4 * kChunk);
}
size_t scan_smem_bytes(int dkp) {
  return sizeof(float) * (size_t(dkp) * kScanCols + size_t(kChunk) * kScanCols);
}

__global__ void __launch_bounds__(kPrepareThreads)
    delta_chunk_prepare_kernel(DeltaParams p, ChunkRecord rec, float* records) {
  await_inputs();
  const int h = blockIdx.x, c = blockIdx.y, kh = h / p.ratio, tid = threadIdx.x;
  const int c0 = c * kChunk, n = min(kChunk, p.T - c0);
  const int dk = p.dk, dkp = rec.dkp, dv = p.dv, ldk = dk + 1, ldl = kChunk + 1;
  extern __shared__ float sm[];
  float* Ks = sm;                  // Ks[r * ldk + i] = k_{c0+r}[i]
  float* L = Ks + kChunk * ldk;    // L[r * ldl + s]: A, then Tm (strictly lower part)
  float* row = L + kChunk * ldl;   // row r of A during its substitution step
  float* gam = row + kChunk;       // γ_r
  float* beta = gam + kChunk;      // β_r
  float* to_last = beta + kChunk;  // e^{γ_{n-1}-γ_s}
  float* dst = records + (size_t(h) * gridDim.y + c) * rec.floats();  // this block's record
  const float* q = p.q + size_t(c0) * p.q0 + size_t(kh) * p.q1;
  const float* k = p.k + size_t(c0) * p.q0 + size_t(kh) * p.q1;
  const float* v = p.v + size_t(c0) * p.v0 + size_t(h) * p.v1;

  // Gates: g_r (log decay) and β_r; rows past n count as g = 0 so the scan stays exact.
  if (tid < kChunk) {
    const float A = expf(p.A_log[h]);
    gam[tid] = tid < n ? -A * softplusf_(p.a[size_t(c0 + tid) * p.a0 + h] + p.dt_bias[h]) : 0.0f;
    beta[tid] = tid < n ? sigmoidf_(p.b[size_t(c0 + tid) * p.b0 + h]) : 0.0f;
  }
  for (int e = tid; e < n * dk; e += blockDim.x) {
    const int r = e / dk, i = e % dk;
    Ks[r * ldk + i] = k[size_t(r) * p.q0 + i];
  }
  __syncthreads();
  if (tid < 32) {  // γ: inclusive scan, two rows per lane
    const float g0 = gam[2 * tid], g1 = gam[2 * tid + 1];
    float x = g0 + g1;
    for (int o = 1; o < 32; o <<= 1) {
      const float y = __shfl_up_sync(0xffffffffu, x, o);
      if (tid >= o) x += y;
    }
    const float before = x - (g0 + g1);
    gam[2 * tid] = before + g0;
    gam[2 * tid + 1] = before + g0 + g1;
  }
  __syncthreads();

  // A[r][s] = β_r e^{γ_r-γ_s} k_r·k_s, s < r < n.
  for (int e = tid; e < kChunk * kChunk; e += blockDim.x) {
    const int r = e / kChunk, s = e % kChunk;
    if (r >= n || s >= r) continue;
    float d = 0.0f;
    for (int i = 0; i < dk; ++i) d = fmaf(Ks[r * ldk + i], Ks[s * ldk + i], d);
    L[r * ldl + s] = beta[r] * expf(gam[r] - gam[s]) * d;
  }
  __syncthreads();
  // Tm = (I + A)^{-1} by forward substitution, row by row in place (rows < r already hold Tm):
  //   Tm[r][s] = -(A[r][s] + Σ_{s<m<r} A[r][m] Tm[m][s]),  Tm[r][r] = 1 (implicit below).
  for (int r = 1; r < n; ++r) {
    if (tid < r) row[tid] = L[r * ldl + tid];
    __syncthreads();
    if (tid < r) {
      float x = row[tid];
      for (int m = tid + 1; m < r; ++m) x = fmaf(row[m], L[m * ldl + tid], x);
      L[r * ldl + tid] = -x;
    }
    __syncthreads();
  }

  float* bg = row;  // the row copy is free now: bg[s] = β_s e^{γ_s}
  if (tid < n) {
    bg[tid] = beta[tid] * expf(gam[tid]);
    to_last[tid] = expf(gam[n - 1] - gam[tid]);
  }
  __syncthreads();

  // U[r][j] = Σ_{s≤r} Tm[r][s] β_s v_s[j]
  for (int e = tid; e < n * dv; e += blockDim.x) {
    const int r = e / dv, j = e % dv;
    float x = beta[r] * v[size_t(r) * p.v0 + j];
    for (int s = 0; s < r; ++s) x = fmaf(L[r * ldl + s] * beta[s], v[size_t(s) * p.v0 + j], x);
    dst[rec.u() + size_t(r) * dv + j] = x;
  }
  // W[r][i] = Σ_{s≤r} Tm[r][s] β_s e^{γ_s} k_s[i];  Qg[r][i] = e^{γ_r} q_r[i] (zero past dk)
  for (int e = tid; e < n * dkp; e += blockDim.x) {
    const int r = e / dkp, i = e % dkp;
    float w = 0.0f, qg = 0.0f;
    if (i < dk) {
      w = bg[r] * Ks[r * ldk + i];
      for (int s = 0; s < r; ++s) w = fmaf(L[r * ldl + s] * bg[s], Ks[s * ldk + i], w);
      qg = expf(gam[r]) * q[size_t(r) * p.q0 + i];
    }
    dst[rec.w() + size_t(r) * dkp + i] = w;
    dst[rec.qg() + size_t(r) * dkp + i] = qg;
  }
  // Kd^T[i][s] = e^{γ_{n-1}-γ_s} k_s[i]
  for (int e = tid; e < dk * n; e += blockDim.x) {
    const int i = e / n, s = e % n;
    dst[rec.kdt() + size_t(i) * kChunk + s] = to_last[s] * Ks[s * ldk + i];
  }
  // P[r][s] = e^{γ_r-γ_s} q_r·k_s, s ≤ r
  for (int e = tid; e < n * kChunk; e += blockDim.x) {
    const int r = e / kChunk, s = e % kChunk;
    if (s > r) continue;
    float d = 0.0f;
    for (int i = 0; i < dk; ++i) d = fmaf(q[size_t(r) * p.q0 + i], Ks[s * ldk + i], d);
    dst[rec.p() + size_t(r) * kChunk + s] = expf(gam[r] - gam[s]) * d;
  }
  if (tid == 0) dst[rec.glast()] = expf(gam[n - 1]);
}

// Σ_i a[i] b[i * kScanCols + lane] over i < dkp (a 16-byte aligned, zero past dk; b's rows past
// dk zero too).
__device__ __forceinline__ float dot_column(const float* a, const float* b, int dkp, int lane) {
  float x = 0.0f;
  for (int i = 0; i < dkp; i += 4) {
    const float4 a4 = *reinterpret_cast<const float4*>(a + i);
    x = fmaf(a4.x, b[(i + 0) * kScanCols + lane], x);
    x = fmaf(a4.y, b[(i + 1) * kScanCols + lane], x);
    x = fmaf(a4.z, b[(i + 2) * kScanCols + lane], x);
    x = fmaf(a4.w, b[(i + 3) * kScanCols + lane], x);
  }
  return x;
}

__global__ void __launch_bounds__(kScanWarps * 32)
    delta_chunk_scan_kernel(DeltaParams p, ChunkRecord rec, const float* records, int chunks) {
  await_inputs();
  const int h = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int j = blockIdx.y * kScanCols + lane, dk = p.dk, dkp = rec.dkp, dv = p.dv;
  const bool live = j < dv;
  extern __shared__ float sm[];
  float* Ss = sm;                   // Ss[i * kScanCols + lane] = S[i][j]; rows past dk zero
  float* D = Ss + dkp * kScanCols;  // D[r * kScanCols + lane] = δ_r[j]
  float* S = p.S + size_t(h) * p.S_pitch;
  for (int i = warp; i < dkp; i += kScanWarps)
    Ss[i * kScanCols + lane] = live && i < dk ? S[size_t(i) * dv + j] : 0.0f;
  __syncthreads();
  for (int c = 0; c < chunks; ++c) {
    const int c0 = c * kChunk, n = min(kChunk, p.T - c0);
    const float* in = records + (size_t(h) * chunks + c) * rec.floats();
    // δ = U - W S0
    for (int r = warp; r < n; r += kScanWarps) {
      const float u = live ? in[rec.u() + size_t(r) * dv + j] : 0.0f;
      D[r * kScanCols + lane] = u - dot_column(in + rec.w() + size_t(r) * dkp, Ss, dkp, lane);
    }
    __syncthreads();
    // out = (e^{γ} Q) S0 + P δ
    for (int r = warp; r < n; r += kScanWarps) {
      float x = dot_column(in + rec.qg() + size_t(r) * dkp, Ss, dkp, lane);
      const float* pr = in + rec.p() + size_t(r) * kChunk;
      for (int s = 0; s <= r; ++s) x = fmaf(pr[s], D[s * kScanCols + lane], x);
      if (live) p.out[size_t(c0 + r) * p.o0 + size_t(h) * p.o1 + j] = x;
    }
    __syncthreads();  // S0 is read by every row above before it is replaced
    // S = e^{γ_{n-1}} S0 + Kd^T δ
    const float glast = in[rec.glast()];
    for (int i = warp; i < dk; i += kScanWarps) {
      float x = glast * Ss[i * kScanCols + lane];
      const float* kd = in + rec.kdt() + size_t(i) * kChunk;
      for (int s = 0; s < n; ++s) x = fmaf(kd[s], D[s * kScanCols + lane], x);
      Ss[i * kScanCols + lane] = x;
    }
    __syncthreads();  // the next chunk's δ reads the new S; its D rows overwrite this chunk's
  }
  if (live)
    for (int i = warp; i < dk; i += kScanWarps) S[size_t(i) * dv + j] = Ss[i * kScanCols + lane];
}

// Opts `kernel` into `bytes` of dynamic shared memory beyond 48 KB; false if the device cannot.
template <typename Kernel>
bool allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return true;
  int dev = 0, limit = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (bytes > size_t(limit)) return false;
  MF_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  return true;
}

}  // namespace

void CudaBackend::gated_delta_rule(const DeltaRuleArgs& a) {
  const OpTimer timer(*this, "delta_rule", a.q.shape[0]);  // prompts apart from decode
  MF_ASSERT(a.q.rank == 3 && a.k.rank == 3 && a.v.rank == 3 && a.state != nullptr);
  const size_t T = a.q.shape[0], nk = a.q.shape[1], dk = a.q.shape[2];
  const size_t nv = a.v.shape[1], dv = a.v.shape[2];
  MF_ASSERT(a.k.shape == a.q.shape && a.v.shape[0] == T && nv % nk == 0);
  MF_ASSERT(a.k.stride == a.q.stride);
  MF_ASSERT(a.a.rank == 2 && a.b.rank == 2 && a.a.rows() == T && a.a.shape[1] == nv &&
            a.b.rows() == T && a.b.shape[1] == nv);
  MF_ASSERT(a.out.rank == 3 && a.out.shape == a.v.shape);
  MF_ASSERT(a.state->S.rows() == nv && a.state->S.shape[1] == dk * dv);
  MF_ASSERT(dk <= size_t(kMaxKeyDim) && (dv + 31) / 32 <= 65535);
  if (T == 0) return;
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
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
  p.q_scale = q_scale;
  if (delta_chunked_ && T >= size_t(kChunkedFrom) && dk <= size_t(kMaxChunkedKeyDim)) {
    const ChunkRecord rec = chunk_record(int(dk), int(dv));
    const size_t prep_smem = prepare_smem_bytes(int(dk)), scan_smem = scan_smem_bytes(rec.dkp);
    // The opt-in is asked once per size reached (a kernel's attribute is per process).
    static std::atomic<size_t> prep_allowed{48 * 1024}, scan_allowed{48 * 1024};
    bool fits = true;
    if (prep_smem > prep_allowed.load(std::memory_order_relaxed)) {
      fits = allow_smem(delta_chunk_prepare_kernel, prep_smem);
      if (fits) prep_allowed.store(prep_smem, std::memory_order_relaxed);
    }
    if (fits && scan_smem > scan_allowed.load(std::memory_order_relaxed)) {
      fits = allow_smem(delta_chunk_scan_kernel, scan_smem);
      if (fits) scan_allowed.store(scan_smem, std::memory_order_relaxed);
    }
    if (fits) {
      // q, k normalised in place first: every chunk reads them.
      l2norm_kernel<<<static_cast<unsigned>(T * nk), 32, 0, stream_>>>(
          a.q.f32(), a.q.stride[0], a.q.stride[1], int(nk), int(dk), 1e-6f, q_scale);
      l2norm_kernel<<<static_cast<unsigned>(T * nk), 32, 0, stream_>>>(
          a.k.f32(), a.k.stride[0], a.k.stride[1], int(nk), int(dk), 1e-6f, 1.0f);
      check_launch("delta rule (l2 norm)");
      const unsigned chunks = static_cast<unsigned>((T + kChunk - 1) / kChunk);
      float* records = scratch_attention(size_t(nv) * chunks * rec.floats());
      delta_chunk_prepare_kernel<<<dim3(unsigned(nv), chunks), kPrepareThreads, prep_smem,
                                   stream_>>>(p, rec, records);
      check_launch("delta rule (chunk prepare)");
      delta_chunk_scan_kernel<<<dim3(unsigned(nv), unsigned((dv + kScanCols - 1) / kScanCols)),
                                kScanWarps * 32, scan_smem, stream_>>>(p, rec, records,
                                                                       int(chunks));
      check_launch("delta rule (chunk scan)");
      return;
    }
  }
  const dim3 grid(unsigned(nv), unsigned((dv + 31) / 32));
  if (dk <= 8 * kStepWarps)
    delta_rule_kernel<8><<<grid, kStepWarps * 32, 0, stream_>>>(p);
  else if (dk <= 16 * kStepWarps)
    delta_rule_kernel<16><<<grid, kStepWarps * 32, 0, stream_>>>(p);
  else if (dk <= 32 * kStepWarps)
    delta_rule_kernel<32><<<grid, kStepWarps * 32, 0, stream_>>>(p);
  else
    delta_rule_kernel<kMaxKeyDim / kStepWarps><<<grid, kStepWarps * 32, 0, stream_>>>(p);
  check_launch("delta rule");
}

}  // namespace moeflux::cuda
