// CudaBackend::attention: causal attention with GQA over a preallocated KV cache.
//
// The chunk's keys and values are appended to the cache first; then one block per (row t,
// head h) computes, over positions j <= p = pos0 + t of kv head g = h / (heads / kv_heads),
//   out = Σ_j softmax_j(scale · q·K[j]) V[j]   (· sigmoid(gate) when gated)
// with the online softmax: a running maximum m, normaliser l and accumulator a
// (a <- a e^{m - m'} + e^{s - m'} V[j]). The positions are split across blocks (split-KV, so
// that decode's few heads still fill the GPU), each block's warps take kIlp positions at a
// time, and the partial results are merged with the same rescaling: warps within a block,
// then splits by the last block of (t, h) to finish (no second kernel).
#include <algorithm>

#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_check.hpp"

namespace moeflux::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxHeadDim = 576;  // MLA decode: keys of kv_lora_rank + rope dims

// kc[pos0 + t][g * dk + d] = k[t][g][d] and vc[pos0 + t][g * dv + d] = v[t][g][d]: one
// thread per (t, g, d < max(dk, dv)). When the cache's v is a column view of its k (MLA), the
// chunk's v is the same view of its k, so an element written through both gets one value.
struct AppendArgs {
  const float *k, *v;
  size_t k0, k1, v0, v1;  // strides of the chunk's k [T, nkv, dk] and v [T, nkv, dv]
  float *kc, *vc;
  size_t k_pitch, v_pitch;
  int T, nkv, dk, dv, pos0;
  const int* pos_dev;  // a recorded decode step's position in device memory, else null
  int kv_rows;         // the cache's capacity: positions beyond it are not written
};

__global__ void append_kernel(AppendArgs a) {
  await_inputs();
  const int dmax = max(a.dk, a.dv);
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(a.T) * a.nkv * dmax) return;
  const int d = static_cast<int>(i % dmax);
  const int g = static_cast<int>((i / dmax) % a.nkv);
  const int t = static_cast<int>(i / (size_t(dmax) * a.nkv));
  const size_t p = size_t(a.pos_dev ? *a.pos_dev : a.pos0) + t;
  if (p >= size_t(a.kv_rows)) return;
  if (d < a.dk) a.kc[p * a.k_pitch + size_t(g) * a.dk + d] = a.k[t * a.k0 + g * a.k1 + d];
  if (d < a.dv) a.vc[p * a.v_pitch + size_t(g) * a.dv + d] = a.v[t * a.v0 + g * a.v1 + d];
}

struct AttnParams {
  const float* q;
  size_t q0, q1;  // strides of q [T, heads, hd]
  const float* gate;
  size_t g0, g1;
  const float* K;
  const float* V;
  size_t k_pitch, v_pitch;
  float* out;
  size_t out_pitch;
  float* part;  // [T * heads][splits][dv + 2]: per split m, l, then the unnormalised sum
  // [T * heads]: splits of (t, h) finished so far; 0 between calls (the last one resets it).
  int* done;
  int heads, kv_heads, dk, dv, pos0, split_len, splits;
  float scale;
  // A recorded decode step: pos0 is read from here and split_len derived from it as on the host
  // (max(32, ceil(positions / splits)), `splits` fixed at the most the host would use; splits
  // past the last position stay empty and the merge skips them). Null otherwise.
  const int* pos_dev;
  int kv_rows;  // the cache's capacity: positions beyond it are not read
};

// Keys per warp step: that many independent dot products in flight hide the load latency.
constexpr int kIlp = 4;

// out[t, h] = Σ_splits e^{m_s - M} acc_s / Σ_splits e^{m_s - M} l_s  (· sigmoid(gate)) for
// (t, h) = blockIdx.x, by the whole block (each thread its elements d: the result does not
// depend on the block's size). The parts are read through L2 (__ldcg): other blocks wrote them.
__device__ void merge_splits(const AttnParams& p) {
  const int t = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const float* part = p.part + size_t(blockIdx.x) * p.splits * (p.dv + 2);
  float M = -INFINITY;
  for (int s = 0; s < p.splits; ++s) M = fmaxf(M, __ldcg(part + s * (p.dv + 2)));
  float L = 0.0f;
  for (int s = 0; s < p.splits; ++s) {
    const float m = __ldcg(part + s * (p.dv + 2));
    if (m > -INFINITY) L += __ldcg(part + s * (p.dv + 2) + 1) * expf(m - M);
  }
  float* o = p.out + t * p.out_pitch + size_t(h) * p.dv;
  for (int d = threadIdx.x; d < p.dv; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
      const float m = __ldcg(part + s * (p.dv + 2));
      if (m > -INFINITY) acc += __ldcg(part + s * (p.dv + 2) + 2 + d) * expf(m - M);
    }
    float r = acc / L;
    if (p.gate) r *= sigmoidf_(p.gate[t * p.g0 + h * p.g1 + d]);
    o[d] = r;
  }
}

// Split `blockIdx.y` of row t, head h: positions [y * split_len, ...) up to t's causal length.
// Each warp takes kIlp positions at a time (strided by kWarps * kIlp), lanes split the head
// dimension; the block's warps are merged, and the split's (m, l, Σ e^{s-m} V) stored.
// PL: head-dim elements per lane (dims up to 32 * PL).
template <int PL>
__global__ void __launch_bounds__(kWarps * 32) attention_partial_kernel(AttnParams p) {
  await_inputs();
  const int t = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int g = h / (p.heads / p.kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int pos0 = p.pos0, split_len = p.split_len;
  if (p.pos_dev) {
    pos0 = *p.pos_dev;
    const int max_len = pos0 + static_cast<int>(gridDim.x) / p.heads;
    split_len = max(32, (max_len + p.splits - 1) / p.splits);
  }
  const int len = min(pos0 + t + 1, p.kv_rows);
  const int begin = blockIdx.y * split_len;
  const int end = min(len, begin + split_len);
  __shared__ float qs[PL * 32];
  __shared__ float wm[kWarps], wl[kWarps];
  __shared__ float wacc[kWarps][PL * 32];
  const float* q = p.q + t * p.q0 + h * p.q1;
  for (int d = threadIdx.x; d < p.dk; d += blockDim.x) qs[d] = q[d];
  __syncthreads();

  float m = -INFINITY, l = 0.0f, acc[PL];
#pragma unroll
  for (int i = 0; i < PL; ++i) acc[i] = 0.0f;
  const float* K = p.K + size_t(g) * p.dk;
  const float* V = p.V + size_t(g) * p.dv;
  for (int j0 = begin + warp * kIlp; j0 < end; j0 += kWarps * kIlp) {
    float part[kIlp];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      part[u] = 0.0f;
      if (j0 + u < end) {
        const float* k = K + size_t(j0 + u) * p.k_pitch;
#pragma unroll
        for (int i = 0; i < PL; ++i) {
          const int d = lane + 32 * i;
          if (d < p.dk) part[u] = fmaf(qs[d], k[d], part[u]);
        }
      }
    }
    // The step's value rows, loaded before the reductions so their latency overlaps them
    // (PL <= 8: 4 * PL registers; MLA's wide rows are read where they are used).
    constexpr int VP = PL <= 8 ? PL : 1;
    [[maybe_unused]] float vv[kIlp][VP];
    if constexpr (PL <= 8) {
#pragma unroll
      for (int u = 0; u < kIlp; ++u) {
        const float* v = V + size_t(min(j0 + u, end - 1)) * p.v_pitch;
#pragma unroll
        for (int i = 0; i < PL; ++i) {
          const int d = lane + 32 * i;
          vv[u][i] = d < p.dv ? v[d] : 0.0f;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kIlp; ++u) part[u] = warp_sum(part[u]) * p.scale;
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      if (j0 + u >= end) break;
      const float s = part[u];
      const float m_new = fmaxf(m, s);
      const float c = expf(m - m_new), e = expf(s - m_new);
      l = l * c + e;
      if constexpr (PL <= 8) {
#pragma unroll
        for (int i = 0; i < PL; ++i) acc[i] = acc[i] * c + e * vv[u][i];
      } else {
        const float* v = V + size_t(j0 + u) * p.v_pitch;
#pragma unroll
        for (int i = 0; i < PL; ++i) {
          const int d = lane + 32 * i;
          if (d < p.dv) acc[i] = acc[i] * c + e * v[d];
        }
      }
      m = m_new;
    }
  }
  if (lane == 0) wm[warp] = m, wl[warp] = l;
#pragma unroll
  for (int i = 0; i < PL; ++i) {
    const int d = lane + 32 * i;
    if (d < p.dv) wacc[warp][d] = acc[i];
  }
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, wm[w]);
  float* out = p.part + (size_t(blockIdx.x) * p.splits + blockIdx.y) * (p.dv + 2);
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (wm[w] > -INFINITY) L += wl[w] * expf(wm[w] - M);
    out[0] = M;
    out[1] = L;
  }
  for (int d = threadIdx.x; d < p.dv; d += blockDim.x) {
    float s = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (wm[w] > -INFINITY) s += wacc[w][d] * expf(wm[w] - M);
    out[2 + d] = s;
  }
  // The last split of (t, h) to finish merges them all. Every thread fences its part's writes
  // before the block counts itself, so the block that counts last sees every part; it resets
  // the count for the next call (no other block of this launch touches it again).
  __threadfence();
  __syncthreads();
  __shared__ bool last;
  if (threadIdx.x == 0) {
    last = atomicAdd(p.done + blockIdx.x, 1) == p.splits - 1;
    if (last) p.done[blockIdx.x] = 0;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  merge_splits(p);
}

}  // namespace

void CudaBackend::attention(const AttentionArgs& a) {
  const OpTimer timer(*this, "attention", a.q.rows());
  MF_ASSERT(a.q.rank == 3 && a.k.rank == 3 && a.v.rank == 3 && a.cache != nullptr);
  const size_t T = a.q.shape[0], nh = a.q.shape[1], dk = a.q.shape[2], nkv = a.k.shape[1];
  const size_t dv = a.v.shape[2];
  MF_ASSERT(a.k.shape[0] == T && a.k.shape[2] == dk && a.v.shape[0] == T && a.v.shape[1] == nkv);
  MF_ASSERT(nkv > 0 && nh % nkv == 0 && a.pos0 >= 0);
  MF_ASSERT(dk <= size_t(kMaxHeadDim) && dv <= size_t(kMaxHeadDim));
  MF_ASSERT(a.out.rank == 2 && a.out.rows() == T && a.out.shape[1] == nh * dv);
  MF_ASSERT(a.gate.empty() || (a.gate.rank == 3 && a.gate.shape[0] == T && a.gate.shape[1] == nh &&
                               a.gate.shape[2] == dv));
  KvCache& c = *a.cache;
  MF_ASSERT(c.k.shape[1] == nkv * dk && c.v.shape[1] == nkv * dv &&
            size_t(a.pos0) + T <= c.k.rows() && c.v.rows() == c.k.rows());
  if (T == 0) return;
  const StepInputs* step = recorded_step("attention", -1, a.pos0);
  const int* pos_dev = step ? &step->pos : nullptr;
  const AppendArgs ap{a.k.f32(),     a.v.f32(),      a.k.stride[0], a.k.stride[1], a.v.stride[0],
                      a.v.stride[1], c.k.f32(),      c.v.f32(),     c.k.pitch(),   c.v.pitch(),
                      int(T),        int(nkv),       int(dk),       int(dv),       a.pos0,
                      pos_dev,       int(c.k.rows())};
  append_kernel<<<blocks_for(T * nkv * std::max(dk, dv), 256), 256, 0, stream_>>>(ap);
  check_launch("attention (cache append)");
  AttnParams p;
  p.q = a.q.f32();
  p.q0 = a.q.stride[0];
  p.q1 = a.q.stride[1];
  p.gate = a.gate.empty() ? nullptr : a.gate.f32();
  p.g0 = a.gate.empty() ? 0 : a.gate.stride[0];
  p.g1 = a.gate.empty() ? 0 : a.gate.stride[1];
  p.K = c.k.f32();
  p.V = c.v.f32();
  p.k_pitch = c.k.pitch();
  p.v_pitch = c.v.pitch();
  p.out = a.out.f32();
  p.out_pitch = a.out.pitch();
  p.heads = int(nh);
  p.kv_heads = int(nkv);
  p.dk = int(dk);
  p.dv = int(dv);
  p.pos0 = a.pos0;
  p.scale = a.scale;
  p.pos_dev = pos_dev;
  p.kv_rows = int(c.k.rows());
  // Splits of the longest row's positions: about four blocks per SM (decode has only `heads`
  // blocks per row), at least 32 positions each (two steps of each warp): a warp's steps form
  // a chain of dependent loads, so short splits are what makes decode attention fast.
  const int max_len = a.pos0 + int(T);
  const int want = std::max(1, 528 / int(T * nh));
  p.split_len = std::max(32, (max_len + want - 1) / want);
  p.splits = (max_len + p.split_len - 1) / p.split_len;  // <= want
  // Recorded: as many splits as any position may need (the kernel sizes them from the step's
  // position). Scratch for that many either way, so that a recording finds it grown.
  if (step) p.splits = want;
  p.part = scratch_attention(T * nh * size_t(want) * (dv + 2));
  p.done = attention_counts(T * nh);
  const dim3 grid(unsigned(T * nh), unsigned(p.splits));
  if (std::max(dk, dv) <= 128)
    attention_partial_kernel<4><<<grid, kWarps * 32, 0, stream_>>>(p);
  else if (std::max(dk, dv) <= 256)
    attention_partial_kernel<8><<<grid, kWarps * 32, 0, stream_>>>(p);
  else
    attention_partial_kernel<kMaxHeadDim / 32><<<grid, kWarps * 32, 0, stream_>>>(p);
  check_launch("attention");
}

}  // namespace moeflux::cuda
