// CudaBackend: memory, staging, embedding, norms, rope, routing and the combine. Products are
// in cuda_matmul.cu, attention in cuda_attention.cu, DeltaNet in cuda_deltanet.cu, the expert
// FFN in cuda_moe.cu, cache tiers in cuda_tier.cu.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_backend.hpp"
#include "backend/cuda/cuda_check.hpp"
#include "core/human_bytes.hpp"

namespace moeflux::cuda {

namespace {

constexpr size_t kStagingBytes = size_t{4} << 20;
constexpr size_t kKeptBytes = size_t{4} << 20;

class DeviceBuffer final : public BackendBuffer {
 public:
  DeviceBuffer(void* p, size_t bytes) : p_(p), bytes_(bytes) {}
  ~DeviceBuffer() override { cudaFree(p_); }
  void* data() override { return p_; }
  size_t bytes() const override { return bytes_; }

 private:
  void* p_;
  size_t bytes_;
};

class PinnedBuffer final : public BackendBuffer {
 public:
  PinnedBuffer(void* p, size_t bytes) : p_(p), bytes_(bytes) {}
  ~PinnedBuffer() override { cudaFreeHost(p_); }
  void* data() override { return p_; }
  size_t bytes() const override { return bytes_; }

 private:
  void* p_;
  size_t bytes_;
};

// The innermost vectors of a rank-2 or rank-3 tensor: vector v is at
// p + (v / inner) * s0 + (v % inner) * s1 and has `dim` elements.
struct Vecs {
  float* p;
  size_t s0, s1;
  int inner, dim;
  size_t count;
  __device__ float* at(size_t v) const { return p + (v / inner) * s0 + (v % inner) * s1; }
};

Vecs vecs_of(const Tensor& t) {
  MF_ASSERT(t.rank == 2 || t.rank == 3);
  MF_ASSERT(t.memory == Memory::Device);
  Vecs v;
  v.p = t.f32();
  v.s0 = t.stride[0];
  v.s1 = t.rank == 3 ? t.stride[1] : 0;
  v.inner = t.rank == 3 ? static_cast<int>(t.shape[1]) : 1;
  v.dim = static_cast<int>(t.shape[t.rank - 1]);
  v.count = t.shape[0] * static_cast<size_t>(v.inner);
  return v;
}

__global__ void fill_kernel(Vecs t, float value) {
  await_inputs();
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= t.count * t.dim) return;
  t.at(i / t.dim)[i % t.dim] = value;
}

__global__ void embed_kernel(DevMat E, const int32_t* tokens, int T, float* X, size_t ldx) {
  await_inputs();
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(T) * E.cols) return;
  const int t = static_cast<int>(i / E.cols), c = static_cast<int>(i % E.cols);
  X[t * ldx + c] = decode_elem(E, tokens[t], c);
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v) {
  __shared__ float part[32];
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float s = lane < warps ? part[lane] : 0.0f;
  return warp_sum(s);
}

// Element d of a normalised vector: v / rms * (zero_centered ? 1 + w : w), inv = 1 / rms.
__device__ __forceinline__ float norm_scaled(float v, float inv, const float* w, int d,
                                             int zero_centered) {
  return v * inv * (zero_centered ? 1.0f + w[d] : w[d]);
}

// One vector normalised by the block: element d is value(d) (written to keep[d] too when keep is
// given, before the norm reads it back), y[d] = norm_scaled(value, 1 / rms). Thread i sums
// elements i, i + blockDim.x, ... in that order, then block_sum: whatever value() is, the same
// sums, so a fused producer (combine_norm_kernel) normalises bit for bit as rmsnorm_kernel does.
template <int PER, class Value>
__device__ __forceinline__ void norm_row(int dim, Value value, float* keep, const float* w,
                                         float* y, float eps, int zero_centered) {
  float ss = 0.0f;
  if constexpr (PER > 0) {
    float v[PER];
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int d = threadIdx.x + i * blockDim.x;
      v[i] = d < dim ? value(d) : 0.0f;
      if (keep && d < dim) keep[d] = v[i];
    }
#pragma unroll
    for (int i = 0; i < PER; ++i) ss += v[i] * v[i];
    const float inv = rsqrtf(block_sum(ss) / dim + eps);
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int d = threadIdx.x + i * blockDim.x;
      if (d < dim) y[d] = norm_scaled(v[i], inv, w, d, zero_centered);
    }
  } else {
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
      const float e = value(d);
      if (keep) keep[d] = e;
      ss += e * e;
    }
    const float inv = rsqrtf(block_sum(ss) / dim + eps);
    // Read again: y may alias the source (each thread rewrites only its own elements).
    for (int d = threadIdx.x; d < dim; d += blockDim.x)
      y[d] = norm_scaled(keep ? keep[d] : value(d), inv, w, d, zero_centered);
  }
}

// y = x / sqrt(mean(x^2) + eps) * (zero_centered ? 1 + w : w), one block per vector; y may
// alias x (each thread writes only the elements it read). PER > 0: the vector fits in the
// block's registers (dim <= PER * blockDim.x), read once and all loads issued before the sum;
// PER = 0: any dim, read twice. Thread i sums elements i, i + blockDim.x, ... in that order
// either way (norm_row).
template <int PER>
__global__ void __launch_bounds__(1024)
    rmsnorm_kernel(Vecs x, const float* w, Vecs y, float eps, int zero_centered) {
  await_inputs();
  const float* xv = x.at(blockIdx.x);
  norm_row<PER>(
      x.dim, [xv](int d) { return xv[d]; }, nullptr, w, y.at(blockIdx.x), eps, zero_centered);
}

// y = rmsnorm(x) * w * silu(z), one block per (row, head).
__global__ void rmsnorm_gated_kernel(Vecs x, Vecs z, const float* w, float eps, Vecs y) {
  await_inputs();
  const float* xv = x.at(blockIdx.x);
  const float* zv = z.at(blockIdx.x);
  float* yv = y.at(blockIdx.x);
  float ss = 0.0f;
  for (int d = threadIdx.x; d < x.dim; d += blockDim.x) ss += xv[d] * xv[d];
  const float inv = rsqrtf(block_sum(ss) / x.dim + eps);
  for (int d = threadIdx.x; d < x.dim; d += blockDim.x) yv[d] = xv[d] * inv * w[d] * siluf_(zv[d]);
}

// Rotates (v[i], v[i + half]) of every vector of x [T, heads, dim], i < half, by the angle of
// position pos0 + t: rotate_half convention.
// pos_dev: the position of row 0 in device memory (a recorded decode step), else null.
__global__ void rope_kernel(Vecs x, const float* cos_t, const float* sin_t, size_t table_pitch,
                            int half, int pos0, const int* pos_dev) {
  await_inputs();
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= x.count * half) return;
  if (pos_dev) pos0 = *pos_dev;
  const size_t v = i / half;
  const int d = static_cast<int>(i % half);
  const size_t t = v / x.inner;
  float* p = x.at(v);
  const float c = cos_t[(pos0 + t) * table_pitch + d], s = sin_t[(pos0 + t) * table_pitch + d];
  const float a = p[d], b = p[d + half];
  p[d] = a * c - b * s;
  p[d + half] = b * c + a * s;
}

// norm_rope: one block per vector of a, then of b (blockIdx.x < a.count: a's). The vector is
// read once into shared memory, normalised there when its weight is given (as rmsnorm_kernel,
// with the same per-thread sums and block_sum when dim <= blockDim.x), then rotated pairwise as
// rope_kernel rotates (the same expressions) and written back.
__global__ void norm_rope_kernel(Vecs a, const float* wa, Vecs b, const float* wb, float eps,
                                 int zero_centered, const float* cos_t, const float* sin_t,
                                 size_t table_pitch, int half, int pos0, const int* pos_dev) {
  await_inputs();
  extern __shared__ float v[];  // the vector, [dim]
  const bool first = blockIdx.x < a.count;
  const Vecs x = first ? a : b;
  const float* w = first ? wa : wb;
  const size_t vi = first ? blockIdx.x : blockIdx.x - a.count;
  float* p = x.at(vi);
  const int dim = x.dim;
  float ss = 0.0f;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    const float e = p[d];
    v[d] = e;
    ss += e * e;
  }
  if (w) {  // the same branch for the whole block (block_sum has barriers)
    const float inv = rsqrtf(block_sum(ss) / dim + eps);
    for (int d = threadIdx.x; d < dim; d += blockDim.x)
      v[d] = v[d] * inv * (zero_centered ? 1.0f + w[d] : w[d]);
  }
  __syncthreads();  // every element normalised before any is paired
  if (pos_dev) pos0 = *pos_dev;
  const size_t row = (pos0 + vi / x.inner) * table_pitch;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float out = v[d];
    if (d < half) {
      const float c = cos_t[row + d], s = sin_t[row + d];
      out = v[d] * c - v[d + half] * s;
    } else if (d < 2 * half) {
      const float c = cos_t[row + d - half], s = sin_t[row + d - half];
      out = v[d] * c + v[d - half] * s;
    }
    p[d] = out;
  }
}

// Causal depthwise conv over u = [state | x] + SiLU, y[t][c] = silu(Σ_j w[c][j] u[t + j]).
// Prompts: one thread per (row, channel), every row at once; the state (the last kernel - 1
// inputs) is replaced afterwards by conv_state_kernel, once every row has read the old one.
__global__ void conv1d_silu_rows_kernel(const float* x, size_t ldx, int T, int C, const float* w,
                                        int kernel, const float* state, size_t lds, float* y,
                                        size_t ldy) {
  await_inputs();
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(T) * C) return;
  const int t = static_cast<int>(i / C), c = static_cast<int>(i % C), S = kernel - 1;
  const float* st = state + c * lds;
  const float* wc = w + static_cast<size_t>(c) * kernel;
  float acc = 0.0f;
  for (int j = 0; j < kernel; ++j) {
    const int u = t + j;  // index into [state | x]
    acc += wc[j] * (u < S ? st[u] : x[static_cast<size_t>(u - S) * ldx + c]);
  }
  y[static_cast<size_t>(t) * ldy + c] = siluf_(acc);
}

// state[c] <- the last kernel - 1 entries of [state | x] (ascending: each read is at or after
// the slot it fills).
__global__ void conv_state_kernel(const float* x, size_t ldx, int T, int C, int kernel,
                                  float* state, size_t lds) {
  await_inputs();
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int S = kernel - 1;
  float* st = state + c * lds;
  for (int j = 0; j < S; ++j) {
    const int u = T + j;
    st[j] = u < S ? st[u] : x[static_cast<size_t>(u - S) * ldx + c];
  }
}

// Causal depthwise conv over [state | x] + SiLU, one thread per channel (kernel <= 16): decode
// and short chunks, one launch.
__global__ void conv1d_silu_kernel(const float* x, size_t ldx, int T, int C, const float* w,
                                   int kernel, float* state, size_t lds, float* y, size_t ldy) {
  await_inputs();
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int S = kernel - 1;
  float* st = state + c * lds;
  const float* wc = w + static_cast<size_t>(c) * kernel;
  auto u = [&](int i) { return i < S ? st[i] : x[static_cast<size_t>(i - S) * ldx + c]; };
  for (int t = 0; t < T; ++t) {
    float acc = 0.0f;
    for (int j = 0; j < kernel; ++j) acc += wc[j] * u(t + j);
    y[static_cast<size_t>(t) * ldy + c] = siluf_(acc);
  }
  float next[16];
  for (int j = 0; j < S; ++j) next[j] = u(T + j);
  for (int j = 0; j < S; ++j) st[j] = next[j];
}

// Waits `us` microseconds of the GPU's global timer (after the kernel before has finished: its
// edge from route may be programmatic). Tests only: MOEFLUX_CUDA_SIDE_DELAY_US.
__global__ void delay_kernel(int us) {
  await_inputs();
  uint64_t t0 = 0, t = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  while (t - t0 < uint64_t(us) * 1000);
}

// Softmax top-k routing, one warp per token: probabilities p = softmax(logits) (in shared
// memory), then k rounds of arg-max (ties: the lower index, as the CPU's top_k), weights p
// renormalised over the chosen when asked.
__global__ void route_softmax_kernel(const float* logits, size_t ld, int E, int k, int norm,
                                     int32_t* ids, float* weights) {
  await_inputs();
  extern __shared__ float p[];
  const int t = blockIdx.x, lane = threadIdx.x;
  const float* l = logits + static_cast<size_t>(t) * ld;
  float mx = -INFINITY;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, l[e]);
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int e = lane; e < E; e += 32) sum += (p[e] = expf(l[e] - mx));
  const float inv = 1.0f / warp_sum(sum);
  for (int e = lane; e < E; e += 32) p[e] *= inv;
  __syncwarp();
  float chosen_sum = 0.0f;
  for (int i = 0; i < k; ++i) {
    float best = -INFINITY;
    int at = E;
    for (int e = lane; e < E; e += 32)
      if (p[e] > best) best = p[e], at = e;  // first (lowest) index of this lane's maximum
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oa = __shfl_xor_sync(0xffffffffu, at, o);
      if (ob > best || (ob == best && oa < at)) best = ob, at = oa;
    }
    if (lane == 0) {
      ids[t * k + i] = at;
      weights[t * k + i] = best;
    }
    chosen_sum += best;
    __syncwarp();
    if (lane == 0 && at < E) p[at] = -INFINITY;
    __syncwarp();
  }
  if (norm && lane < k) weights[t * k + lane] /= chosen_sum;
}

// RouterKind::SigmoidGroupTopK (DeepSeek-V3's noaux_tc), one warp per token, as the CPU's
// cpu_route.cpp computes it: s = sigmoid(logit), c = s + bias; group score = sum of the group's
// two largest c; groups ranked (ties: lower index), experts of all but topk_group groups drop
// out; k rounds of arg-max over c (ties: lower index); w = s (/ (Σ s + 1e-20)) · scaling.
// Shared memory: [2E + n_group] floats.
__global__ void route_group_kernel(const float* logits, size_t ld, int E, int k, int G, int keep,
                                   int norm, float scaling, const float* bias, int32_t* ids,
                                   float* weights) {
  await_inputs();
  extern __shared__ float sm[];
  float* s = sm;
  float* c = sm + E;
  float* group = sm + 2 * E;
  const int t = blockIdx.x, lane = threadIdx.x, per = E / G;
  const float* l = logits + static_cast<size_t>(t) * ld;
  for (int e = lane; e < E; e += 32) {
    s[e] = 1.0f / (1.0f + expf(-l[e]));
    c[e] = s[e] + bias[e];
  }
  __syncwarp();
  for (int g = lane; g < G; g += 32) {
    float a = -INFINITY, b = -INFINITY;
    for (int e = g * per; e < (g + 1) * per; ++e) {
      if (c[e] > a) {
        b = a;
        a = c[e];
      } else if (c[e] > b) {
        b = c[e];
      }
    }
    group[g] = a + b;
  }
  __syncwarp();
  bool drop[2] = {false, false};  // for groups lane and lane + 32 (G <= 64)
  for (int i = 0; i < 2; ++i) {
    const int g = lane + 32 * i;
    if (g >= G || keep >= G) continue;
    int above = 0;
    for (int o = 0; o < G; ++o) above += group[o] > group[g] || (group[o] == group[g] && o < g);
    drop[i] = above >= keep;
  }
  __syncwarp();
  for (int i = 0; i < 2; ++i) {
    const int g = lane + 32 * i;
    if (g < G && drop[i])
      for (int e = g * per; e < (g + 1) * per; ++e) c[e] = -INFINITY;
  }
  __syncwarp();
  float chosen = 0.0f;
  for (int i = 0; i < k; ++i) {
    float best = -INFINITY;
    int at = E;
    for (int e = lane; e < E; e += 32)
      if (c[e] > best) best = c[e], at = e;
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oa = __shfl_xor_sync(0xffffffffu, at, o);
      if (ob > best || (ob == best && oa < at)) best = ob, at = oa;
    }
    const float sv = at < E ? s[at] : 0.0f;
    if (lane == 0) {
      ids[t * k + i] = at;
      weights[t * k + i] = sv;
    }
    chosen += sv;
    __syncwarp();
    if (lane == 0 && at < E) c[at] = -INFINITY;
    __syncwarp();
  }
  const float f = (norm ? 1.0f / (chosen + 1e-20f) : 1.0f) * scaling;
  if (lane < k) weights[t * k + lane] *= f;
}

__global__ void copy_kernel(Vecs src, Vecs dst) {
  await_inputs();
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= src.count * src.dim) return;
  dst.at(i / src.dim)[i % src.dim] = src.at(i / src.dim)[i % src.dim];
}

// dst[rows[j]] = src row j, j < n (src: n rows of `cols` floats, packed).
__global__ void scatter_rows_kernel(const float* src, const int32_t* rows, int n, int cols,
                                    float* dst, size_t ldd) {
  await_inputs();
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(n) * cols) return;
  const size_t j = i / cols, c = i % cols;
  dst[size_t(rows[j]) * ldd + c] = src[i];
}

// A combine's operands (CombineArgs on the device).
struct CombineRows {
  const float* slots;
  size_t lds;
  int S;
  const float* routed;
  int K;
  const float* gate;
  size_t ldg;
  float* out;
  size_t ldo;
  int T, H;
};

// out[t][c] + Σ_s w[t,s] slots[t*S + s][c] in slot order; w from routed (s < K) or the gate.
__device__ __forceinline__ float combined(const CombineRows& a, int t, int c) {
  float o = a.out[t * a.ldo + c];
  for (int s = 0; s < a.S; ++s) {
    const float w =
        s < a.K ? a.routed[t * a.K + s] : (a.gate ? sigmoidf_(a.gate[t * a.ldg]) : 1.0f);
    o += w * a.slots[(static_cast<size_t>(t) * a.S + s) * a.lds + c];
  }
  return o;
}

__global__ void combine_kernel(CombineRows a) {
  await_inputs();
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(a.T) * a.H) return;
  const int t = static_cast<int>(i / a.H), c = static_cast<int>(i % a.H);
  a.out[t * a.ldo + c] = combined(a, t, c);
}

// combine_kernel's sums for row t = blockIdx.x, written to out, then the row normalised into y
// as rmsnorm_kernel<PER> does it with the same block size (each thread's elements summed in the
// same order, the same block_sum and expression): bit for bit combine() then rmsnorm(), in one
// pass over the row.
template <int PER>
__global__ void __launch_bounds__(1024)
    combine_norm_kernel(CombineRows a, const float* w, float eps, int zero_centered, float* y,
                        size_t ldy) {
  await_inputs();
  const int t = blockIdx.x;
  norm_row<PER>(
      a.H, [&a, t](int d) { return combined(a, t, d); }, a.out + t * a.ldo, w, y + t * ldy, eps,
      zero_centered);
}

// rmsnorm_kernel's launch for vectors of dim elements: few long vectors (a decode row: one
// block) get a wide block holding the vector in registers (per elements a thread: 1, 2, 4 or
// 8); short or very long ones a narrower block, per 1 when one element a thread covers the
// vector, else 0 (the loop).
struct NormShape {
  int threads, per;
};
NormShape norm_shape(int dim) {
  if (dim > 512 && dim <= 8 * 1024) {
    const int threads = dim <= 1024 ? 256 : 1024;
    const int per = (dim + threads - 1) / threads;  // 1 .. 8
    return {threads, per <= 1 ? 1 : per <= 2 ? 2 : per <= 4 ? 4 : 8};
  }
  const int threads = dim >= 512 ? 256 : dim >= 128 ? 128 : 32;
  return {threads, dim <= threads ? 1 : 0};
}

// f(std::integral_constant<int, PER>) for a NormShape's per.
template <class F>
void with_norm_per(int per, F&& f) {
  switch (per) {
    case 0:
      return f(std::integral_constant<int, 0>{});
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    default:
      return f(std::integral_constant<int, 8>{});
  }
}

}  // namespace

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    fail(std::string("CUDA: launching ") + what + ": " + cudaGetErrorString(err));
}

DevMat dev_mat(const MatrixView& m) {
  DevMat d;
  d.data = m.data;
  d.scales = m.scales;
  d.biases = m.biases;
  d.rows = static_cast<int>(m.rows);
  d.cols = static_cast<int>(m.cols);
  d.group = m.fmt.group;
  d.row_bytes = row_data_bytes(m.fmt, m.cols);
  switch (m.fmt.kind) {
    case QuantKind::F32:
      d.code = kF32;
      break;
    case QuantKind::F16:
      d.code = kF16;
      break;
    case QuantKind::BF16:
      d.code = kBF16;
      break;
    case QuantKind::Q8_0:
      d.code = kQ8;
      break;
    case QuantKind::Affine:
      if (m.fmt.bits != 4 && m.fmt.bits != 8)
        fail("CUDA backend: affine " + std::to_string(m.fmt.bits) +
             "-bit weights are not supported");
      d.code = m.fmt.bits == 4 ? kA4 : kA8;
      break;
  }
  return d;
}

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

CudaBackend::OpTimer::OpTimer(CudaBackend& be, const char* op, size_t rows)
    : be_(be), op_(op), prompt_(rows > size_t(kMatvecRows)) {
  if (!be_.profile_) return;
  MF_CUDA(cudaStreamSynchronize(be_.stream_));
  t0_ = now_seconds();
}

CudaBackend::OpTimer::~OpTimer() {
  if (!be_.profile_) return;
  cudaStreamSynchronize(be_.stream_);
  const double dt = now_seconds() - t0_;
  for (OpTime& o : be_.op_times_)
    if (o.op == op_ && o.prompt == prompt_) {
      o.seconds += dt;
      ++o.calls;
      return;
    }
  be_.op_times_.push_back({op_, prompt_, dt, 1});
}

CudaBackend::CudaBackend(int device) : device_(device) {
  const char* prof = std::getenv("MOEFLUX_CUDA_PROFILE");
  profile_ = prof && *prof && std::string(prof) != "0";
  int count = 0;
  MF_CUDA(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count)
    fail("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
         " visible)");
  MF_CUDA(cudaSetDevice(device));
  MF_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  MF_CUDA(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
  staging_bytes_ = kStagingBytes;
  MF_CUDA(cudaMallocHost(&staging_host_, staging_bytes_));
  MF_CUDA(cudaMalloc(&staging_dev_, staging_bytes_));
  MF_CUDA(cudaMallocHost(&kept_host_, kKeptBytes));
  MF_CUDA(cudaMalloc(&kept_dev_, kKeptBytes));
  graphs_enabled_ = !env_is("MOEFLUX_CUDA_GRAPHS", "0");
  // Programmatic edges need sm_90 or later; MOEFLUX_CUDA_PDL=0 keeps full ones (to compare).
  int major = 0;
  MF_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  programmatic_edges_ = major >= 9 && !env_is("MOEFLUX_CUDA_PDL", "0");
  // MOEFLUX_CUDA_DELTA_CHUNKED=0: prompts run the DeltaNet recurrence token by token (to compare).
  delta_chunked_ = !env_is("MOEFLUX_CUDA_DELTA_CHUNKED", "0");
  // MOEFLUX_CUDA_FUSED_NORM=0: the combine and the next layer's norm as two kernels (to compare).
  fused_combine_norm_ = !env_is("MOEFLUX_CUDA_FUSED_NORM", "0");
  MF_CUDA(cudaMallocHost(&step_host_, sizeof(StepInputs)));
  MF_CUDA(cudaMalloc(&step_dev_, sizeof(StepInputs)));
  MF_CUDA(cudaEventCreateWithFlags(&step_read_, cudaEventDisableTiming));
  MF_CUDA(cudaStreamCreateWithFlags(&side_stream_, cudaStreamNonBlocking));
  MF_CUDA(cudaEventCreateWithFlags(&route_done_, cudaEventDisableTiming));
  MF_CUDA(cudaEventCreateWithFlags(&side_done_, cudaEventDisableTiming));
  side_copies_ = !env_is("MOEFLUX_CUDA_SIDE_COPIES", "0");
  // MOEFLUX_CUDA_SIDE_DELAY_US (tests): each side branch first waits this long on the GPU, so
  // that a join missing before the next route would let it overwrite what the copies read.
  if (const char* d = std::getenv("MOEFLUX_CUDA_SIDE_DELAY_US"))
    side_delay_us_ = std::max(0, std::atoi(d));
}

CudaBackend::~CudaBackend() {
  if (capturing_) abort_recording("the backend is destroyed");
  cudaStreamSynchronize(stream_);
  for (const Recording& r : recordings_) cudaGraphExecDestroy(r.exec);
  cudaEventDestroy(step_read_);
  cudaEventDestroy(route_done_);
  cudaEventDestroy(side_done_);
  cudaStreamDestroy(side_stream_);
  cudaFree(step_dev_);
  cudaFreeHost(step_host_);
  cudaFreeHost(pick_host_);
  if (profile_ && !op_times_.empty()) {
    double total = 0;
    for (const OpTime& o : op_times_) total += o.seconds;
    std::fprintf(stderr,
                 "[cuda profile] op             rows     calls    total ms   us/call   share\n");
    for (const OpTime& o : op_times_)
      std::fprintf(stderr, "[cuda profile] %-14s %-6s %7llu %10.2f %9.2f %6.1f%%\n", o.op,
                   o.prompt ? "prompt" : "", static_cast<unsigned long long>(o.calls),
                   1e3 * o.seconds, 1e6 * o.seconds / double(o.calls), 100 * o.seconds / total);
  }
  cudaStreamSynchronize(copy_stream_);
  for (void* p : resident_) cudaFree(p);
  cudaFree(staging_dev_);
  cudaFreeHost(staging_host_);
  cudaFree(kept_dev_);
  cudaFreeHost(kept_host_);
  cudaStreamDestroy(copy_stream_);
  cudaStreamDestroy(stream_);
}

std::unique_ptr<BackendBuffer> CudaBackend::allocate(size_t bytes, const char* what) {
  void* p = nullptr;
  const size_t n = std::max<size_t>(bytes, 256);
  if (cudaMalloc(&p, n) != cudaSuccess) {
    cudaGetLastError();  // clear the error state
    fail(std::string(what) + ": cannot allocate " + human_bytes(double(n)) + " of GPU memory");
  }
  return std::make_unique<DeviceBuffer>(p, n);
}

std::unique_ptr<BackendBuffer> CudaBackend::allocate_host(size_t bytes, const char* what) {
  void* p = nullptr;
  const size_t n = std::max<size_t>(bytes, 64);
  if (cudaMallocHost(&p, n) != cudaSuccess) {
    cudaGetLastError();
    fail(std::string(what) + ": cannot allocate " + human_bytes(double(n)) +
         " of page-locked host memory");
  }
  return std::make_unique<PinnedBuffer>(p, n);
}

namespace {

class RegisteredHost final : public HostPin {
 public:
  explicit RegisteredHost(void* p) : p_(p) {}
  ~RegisteredHost() override { cudaHostUnregister(p_); }

 private:
  void* p_;
};

}  // namespace

std::unique_ptr<HostPin> CudaBackend::pin_host(void* p, size_t bytes) {
  if (p == nullptr || bytes == 0) return nullptr;
  if (cudaHostRegister(p, bytes, cudaHostRegisterDefault) != cudaSuccess) {
    cudaGetLastError();  // not fatal: copies to and from p take the pageable path
    return nullptr;
  }
  return std::make_unique<RegisteredHost>(p);
}

const uint8_t* CudaBackend::resident(const uint8_t* host, size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, std::max<size_t>(bytes, 256)) != cudaSuccess) {
    cudaGetLastError();
    fail("resident weights: cannot allocate " + human_bytes(double(bytes)) + " of GPU memory");
  }
  resident_.push_back(p);
  MF_CUDA(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
  return static_cast<const uint8_t*>(p);
}

void CudaBackend::upload(const float* host, size_t host_pitch, const Tensor& dst) {
  const OpTimer timer(*this, "upload");
  MF_ASSERT(dst.rank == 2 && dst.memory == Memory::Device);
  MF_CUDA(cudaMemcpy2DAsync(dst.data, dst.pitch() * sizeof(float), host, host_pitch * sizeof(float),
                            dst.shape[1] * sizeof(float), dst.rows(), cudaMemcpyHostToDevice,
                            stream_));
  MF_CUDA(cudaStreamSynchronize(stream_));  // the host buffer may be reused at once
}

void CudaBackend::download(const Tensor& src, float* host, size_t host_pitch) {
  download_async(src, host, host_pitch);
  MF_CUDA(cudaStreamSynchronize(stream_));
}

void CudaBackend::download_async(const Tensor& src, float* host, size_t host_pitch) {
  const OpTimer timer(*this, "download");
  MF_ASSERT(src.rank == 2 && src.memory == Memory::Device);
  MF_CUDA(cudaMemcpy2DAsync(host, host_pitch * sizeof(float), src.data, src.pitch() * sizeof(float),
                            src.shape[1] * sizeof(float), src.rows(), cudaMemcpyDeviceToHost,
                            stream_));
}

void CudaBackend::scatter_rows(const float* host, size_t host_pitch, std::span<const int32_t> rows,
                               const Tensor& dst) {
  const OpTimer timer(*this, "scatter_rows");
  MF_ASSERT(dst.rank == 2 && dst.memory == Memory::Device);
  if (rows.empty()) return;
  const size_t n = rows.size(), cols = dst.shape[1];
  for (const int32_t r : rows) MF_ASSERT(r >= 0 && size_t(r) < dst.rows());
  // Rows and indices staged in one piece: [n * cols floats | n indices].
  thread_local std::vector<float> packed;
  packed.resize(n * cols + n);
  for (size_t j = 0; j < n; ++j)
    std::memcpy(packed.data() + j * cols, host + j * host_pitch, cols * sizeof(float));
  std::memcpy(packed.data() + n * cols, rows.data(), n * sizeof(int32_t));
  const auto* src = static_cast<const float*>(stage(packed.data(), packed.size() * sizeof(float)));
  const auto* idx = reinterpret_cast<const int32_t*>(src + n * cols);
  scatter_rows_kernel<<<blocks_for(n * cols, 256), 256, 0, stream_>>>(src, idx, int(n), int(cols),
                                                                      dst.f32(), dst.pitch());
  check_launch("scatter_rows");
}

void CudaBackend::fill(const Tensor& t, float value) {
  if (t.empty()) return;
  const Vecs v = vecs_of(t);
  const size_t n = v.count * v.dim;
  fill_kernel<<<blocks_for(n, 256), 256, 0, stream_>>>(v, value);
  check_launch("fill");
}

void CudaBackend::set_step_inputs(StepInputs in) {
  // The last run's first node may not have read the previous inputs yet (an event never
  // recorded counts as reached).
  MF_CUDA(cudaEventSynchronize(step_read_));
  *step_host_ = in;
}

cudaError_t CudaBackend::launch_recording(Recording& r) {
  if (cudaError_t e = cudaGraphLaunch(r.exec, stream_); e != cudaSuccess) return e;
  r.last_run = ++runs_;
  return cudaEventRecord(step_read_, stream_);
}

void CudaBackend::count_failure(std::string why) {
  cudaGetLastError();  // not fatal: the ops are issued one by one
  forget_blocks_kept_in_recording();
  ++capture_failures_;
  ++rec_stats_.failed;
  rec_stats_.last_failure = std::move(why);
}

bool CudaBackend::replay(uint64_t key, StepInputs in) {
  if (!graphs_enabled_ || profile_ || capturing_) return false;
  for (size_t i = 0; i < recordings_.size(); ++i) {
    Recording& r = recordings_[i];
    if (r.key != key) continue;
    if (r.epoch != memory_epoch_) {  // its scratch or descriptors were replaced: record anew
      MF_CUDA(cudaStreamSynchronize(stream_));
      cudaGraphExecDestroy(r.exec);
      recordings_.erase(recordings_.begin() + std::ptrdiff_t(i));
      return false;
    }
    set_step_inputs(in);
    MF_CUDA(launch_recording(r));
    ++rec_stats_.replayed;
    return true;
  }
  return false;
}

bool CudaBackend::begin_recording(uint64_t key, StepInputs in) {
  // Profiling waits around every op: nothing to record then.
  if (!graphs_enabled_ || profile_ || capturing_ || capture_failures_ >= kMaxFailures) return false;
  set_step_inputs(in);
  // Thread-local mode: a call of this thread that cannot be recorded (a wait, an allocation)
  // fails, and with it the recording, instead of running while the recorded work has not.
  kept_blocks_at_capture_ = kept_.size();
  kept_used_at_capture_ = kept_used_;
  if (cudaError_t e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
      e != cudaSuccess) {
    count_failure(cudaGetErrorString(e));
    return false;
  }
  capturing_ = true;
  recording_key_ = key;
  // The recording's first node: the inputs the host wrote before this run.
  if (cudaMemcpyAsync(step_dev_, step_host_, sizeof(StepInputs), cudaMemcpyHostToDevice, stream_) !=
      cudaSuccess) {
    abort_recording("the step inputs' copy cannot be recorded");
    return false;
  }
  return true;
}

const Backend::StepInputs* CudaBackend::recorded_step(const char* op, int token, int pos) const {
  if (!capturing_) return nullptr;
  if ((token != -1 && token != step_host_->token) || (pos != -1 && pos != step_host_->pos))
    fail(std::string("CUDA: ") + op + " recorded with inputs other than the step's");
  return step_dev_;
}

namespace {

// Turns every edge between two kernel nodes of `g` into a programmatic one: the later kernel
// may start once every block of the earlier has called await_inputs() (griddepcontrol
// .launch_dependents) or finished, and its own await_inputs() waits for the earlier kernel to
// complete (cuda_kernels.cuh). Other edges (copies) stay full.
cudaError_t make_kernel_edges_programmatic(cudaGraph_t g) {
  size_t n = 0;
  if (cudaError_t e = cudaGraphGetEdges(g, nullptr, nullptr, nullptr, &n); e != cudaSuccess)
    return e;
  std::vector<cudaGraphNode_t> from(n), to(n);
  std::vector<cudaGraphEdgeData> data(n);
  if (cudaError_t e = cudaGraphGetEdges(g, from.data(), to.data(), data.data(), &n);
      e != cudaSuccess)
    return e;
  auto is_kernel = [](cudaGraphNode_t node) {
    cudaGraphNodeType t{};
    return cudaGraphNodeGetType(node, &t) == cudaSuccess && t == cudaGraphNodeTypeKernel;
  };
  cudaGraphEdgeData programmatic{};
  programmatic.from_port = cudaGraphKernelNodePortProgrammatic;
  programmatic.type = cudaGraphDependencyTypeProgrammatic;
  for (size_t i = 0; i < n; ++i) {
    if (data[i].type != cudaGraphDependencyTypeDefault || !is_kernel(from[i]) || !is_kernel(to[i]))
      continue;
    if (cudaError_t e = cudaGraphRemoveDependencies(g, &from[i], &to[i], &data[i], 1);
        e != cudaSuccess)
      return e;
    if (cudaError_t e = cudaGraphAddDependencies(g, &from[i], &to[i], &programmatic, 1);
        e != cudaSuccess)
      return e;
  }
  return cudaSuccess;
}

}  // namespace

// The side branch of route()'s copies, if one was forked (even one that failed halfway), joined
// into the compute stream: side_done_ recorded where the branch ends, the compute stream made
// to wait for it (a recording must end with every branch joined).
cudaError_t CudaBackend::join_side_branch() {
  if (!side_pending_) return cudaSuccess;
  side_pending_ = false;
  cudaError_t e = cudaEventRecord(side_done_, side_stream_);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(stream_, side_done_, 0);
  return e;
}

void CudaBackend::end_recording() {
  MF_ASSERT(capturing_);
  cudaError_t err = join_side_branch();
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  if (const cudaError_t e = cudaStreamEndCapture(stream_, &graph); err == cudaSuccess) err = e;
  Recording r;
  r.key = recording_key_;
  r.epoch = memory_epoch_;
  if (err == cudaSuccess && graph != nullptr && programmatic_edges_)
    err = make_kernel_edges_programmatic(graph);
  if (err == cudaSuccess && graph != nullptr) err = cudaGraphInstantiate(&r.exec, graph, 0);
  if (graph) cudaGraphDestroy(graph);
  if (err == cudaSuccess && graph != nullptr) err = launch_recording(r);
  if (err != cudaSuccess || graph == nullptr) {
    // Nothing recorded has run: the caller issues the ops again (end_recording throws like an
    // op).
    if (r.exec) cudaGraphExecDestroy(r.exec);
    const std::string why =
        std::string("CUDA: recording the decode step failed: ") + cudaGetErrorString(err);
    count_failure(why);
    fail(why);
  }
  capture_failures_ = 0;
  ++rec_stats_.recorded;
  // One recording per key: a new one replaces an older of the same key, else the least
  // recently run goes when the table is full (after the stream drains: it may still run).
  auto same_or_oldest = recordings_.end();
  for (auto it = recordings_.begin(); it != recordings_.end(); ++it)
    if (it->key == r.key) same_or_oldest = it;
  if (same_or_oldest == recordings_.end() && recordings_.size() >= kMaxRecordings)
    same_or_oldest = std::min_element(
        recordings_.begin(), recordings_.end(),
        [](const Recording& a, const Recording& b) { return a.last_run < b.last_run; });
  if (same_or_oldest != recordings_.end()) {
    MF_CUDA(cudaStreamSynchronize(stream_));
    cudaGraphExecDestroy(same_or_oldest->exec);
    *same_or_oldest = r;
  } else {
    recordings_.push_back(r);
  }
}

void CudaBackend::abort_recording(std::string_view why) {
  if (!capturing_) return;
  join_side_branch();  // so that the capture can end (its errors are the abandoned recording's)
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(stream_, &graph);  // invalidated, usually: nothing of it runs
  if (graph) cudaGraphDestroy(graph);
  count_failure(std::string(why));
}

DeviceMemory CudaBackend::device_memory() const {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  return {total - free, total};
}

void CudaBackend::synchronize() {
  MF_CUDA(cudaStreamSynchronize(stream_));
  staging_used_ = 0;
}

void* CudaBackend::stage(const void* host, size_t bytes) {
  // A recording would bake in the staged copy's source, which later staging overwrites.
  if (capturing_) fail("CUDA: staged host data cannot be recorded");
  const size_t aligned = (bytes + 255) / 256 * 256;
  if (aligned > staging_bytes_)
    fail("CUDA backend: " + std::to_string(bytes) + " bytes of arguments exceed the staging area");
  if (staging_used_ + aligned > staging_bytes_) synchronize();  // everything staged has landed
  uint8_t* h = staging_host_ + staging_used_;
  uint8_t* d = staging_dev_ + staging_used_;
  std::memcpy(h, host, bytes);
  MF_CUDA(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream_));
  staging_used_ += aligned;
  return d;
}

const void* CudaBackend::keep(const void* host, size_t bytes) {
  // Descriptors are plain data, zero-initialised padding included: equal bytes, equal arguments.
  const uint64_t h = KeptBlocks::hash(host, bytes);
  if (const size_t at = kept_.find(host, bytes, h, kept_host_); at != KeptBlocks::npos)
    return kept_dev_ + at;
  const size_t aligned = (bytes + 255) / 256 * 256;
  if (aligned > kKeptBytes) {
    if (capturing_) fail("CUDA: arguments too large to keep while recording");
    return stage(host, bytes);
  }
  if (kept_used_ + aligned > kKeptBytes) {
    if (capturing_) fail("CUDA: the kept arguments' arena is full while recording");
    synchronize();    // nothing issued may still read the arena
    ++memory_epoch_;  // nor may a recording replay it
    kept_.clear();
    kept_used_ = 0;
  }
  const size_t offset = kept_used_;
  kept_used_ += aligned;
  std::memcpy(kept_host_ + offset, host, bytes);
  MF_CUDA(cudaMemcpyAsync(kept_dev_ + offset, kept_host_ + offset, bytes, cudaMemcpyHostToDevice,
                          stream_));
  kept_.add(h, offset, bytes);
  return kept_dev_ + offset;
}

void* CudaBackend::GrowingBuffer::get(size_t bytes, cudaStream_t stream, bool zeroed) {
  if (bytes <= bytes_) return p_;
  MF_CUDA(cudaStreamSynchronize(stream));  // fails while recording: the recording is dropped
  ++epoch_;
  cudaFree(p_);
  p_ = nullptr;
  const size_t n = std::max(bytes, 2 * bytes_);
  if (cudaMalloc(&p_, n) != cudaSuccess) {
    cudaGetLastError();
    bytes_ = 0;
    fail("CUDA backend: cannot allocate " + human_bytes(double(n)) + " of scratch");
  }
  bytes_ = n;
  if (zeroed) MF_CUDA(cudaMemsetAsync(p_, 0, n, stream));
  return p_;
}

void CudaBackend::embed(const MatrixView& E, std::span<const int> tokens, const Tensor& X) {
  const OpTimer timer(*this, "embed", tokens.size());
  MF_ASSERT(X.rank == 2 && X.rows() == tokens.size() && X.shape[1] == E.cols);
  if (tokens.empty()) return;
  for (int t : tokens) MF_ASSERT(t >= 0 && static_cast<size_t>(t) < E.rows);
  static_assert(sizeof(int) == sizeof(int32_t));
  // Recording: the step's token, read from device memory at each run.
  const StepInputs* step = recorded_step("embed", tokens.size() == 1 ? tokens[0] : -2, -1);
  const auto* ids =
      step ? &step->token : static_cast<const int32_t*>(stage(tokens.data(), tokens.size_bytes()));
  const size_t n = tokens.size() * E.cols;
  embed_kernel<<<blocks_for(n, 256), 256, 0, stream_>>>(
      dev_mat(E), ids, static_cast<int>(tokens.size()), X.f32(), X.pitch());
  check_launch("embed");
}

void CudaBackend::rmsnorm(const Tensor& x, const float* w, const Tensor& y, float eps,
                          bool zero_centered) {
  const OpTimer timer(*this, "rmsnorm", x.rows());
  MF_ASSERT(x.rank == y.rank && x.shape == y.shape && w != nullptr);
  if (x.empty()) return;
  const Vecs xv = vecs_of(x), yv = vecs_of(y);
  const unsigned blocks = static_cast<unsigned>(xv.count);
  const NormShape ns = norm_shape(xv.dim);
  with_norm_per(ns.per, [&](auto per) {
    rmsnorm_kernel<decltype(per)::value>
        <<<blocks, ns.threads, 0, stream_>>>(xv, w, yv, eps, zero_centered);
  });
  check_launch("rmsnorm");
}

void CudaBackend::rmsnorm_gated(const Tensor& x, const Tensor& z, const float* w, float eps,
                                const Tensor& y) {
  const OpTimer timer(*this, "rmsnorm_gated");
  MF_ASSERT(x.rank == 3 && z.rank == 3 && y.rank == 3 && x.shape == z.shape && x.shape == y.shape);
  if (x.empty()) return;
  const Vecs xv = vecs_of(x);
  const int threads = xv.dim >= 128 ? 128 : 32;
  rmsnorm_gated_kernel<<<static_cast<unsigned>(xv.count), threads, 0, stream_>>>(xv, vecs_of(z), w,
                                                                                 eps, vecs_of(y));
  check_launch("rmsnorm_gated");
}

void CudaBackend::rope(const Tensor& x, const RopeTable& table, int pos0) {
  const OpTimer timer(*this, "rope", x.rows());
  MF_ASSERT(x.rank == 3 && pos0 >= 0);
  const int half = table.rotary_dim / 2;
  MF_ASSERT(2 * static_cast<size_t>(half) <= x.shape[2] && pos0 + x.shape[0] <= table.cos.rows());
  if (x.empty() || half == 0) return;
  const Vecs v = vecs_of(x);
  const size_t n = v.count * half;
  const StepInputs* step = recorded_step("rope", -1, pos0);
  rope_kernel<<<blocks_for(n, 256), 256, 0, stream_>>>(v, table.cos.f32(), table.sin.f32(),
                                                       table.cos.pitch(), half, pos0,
                                                       step ? &step->pos : nullptr);
  check_launch("rope");
}

void CudaBackend::norm_rope(const Tensor& a, const float* wa, const Tensor& b, const float* wb,
                            float eps, bool zero_centered, const RopeTable& table, int pos0) {
  const OpTimer timer(*this, "norm_rope", a.rows());
  MF_ASSERT(a.rank == 3 && pos0 >= 0);
  MF_ASSERT(b.empty() || (b.rank == 3 && b.shape[0] == a.shape[0]));
  const int half = table.rotary_dim / 2;
  MF_ASSERT(2 * static_cast<size_t>(half) <= a.shape[2] && pos0 + a.shape[0] <= table.cos.rows());
  MF_ASSERT(b.empty() || 2 * static_cast<size_t>(half) <= b.shape[2]);
  if (a.empty() && b.empty()) return;
  const Vecs av = vecs_of(a);
  Vecs bv{};
  bv.inner = 1;
  if (!b.empty()) bv = vecs_of(b);
  const int dim = std::max(av.dim, b.empty() ? 0 : bv.dim);
  const size_t blocks = av.count + bv.count;
  MF_ASSERT(blocks <= 0x7fffffffu && dim <= 8 * 1024);
  // As rmsnorm() picks for short vectors, so that a norm here sums as it does there.
  const int threads = dim >= 512 ? 256 : dim >= 128 ? 128 : 32;
  const StepInputs* step = recorded_step("norm_rope", -1, pos0);
  norm_rope_kernel<<<static_cast<unsigned>(blocks), threads, dim * sizeof(float), stream_>>>(
      av, wa, bv, wb, eps, zero_centered ? 1 : 0, table.cos.f32(), table.sin.f32(),
      table.cos.pitch(), half, pos0, step ? &step->pos : nullptr);
  check_launch("norm_rope");
}

void CudaBackend::conv1d_silu(const Tensor& x, const float* w, size_t kernel, const Tensor& state,
                              const Tensor& y) {
  const OpTimer timer(*this, "conv1d_silu", x.rows());
  MF_ASSERT(kernel >= 1 && kernel <= 16 && w != nullptr);
  MF_ASSERT(x.rank == 2 && y.rank == 2 && x.rows() == y.rows() && x.shape[1] == y.shape[1]);
  const size_t T = x.rows(), C = x.shape[1];
  MF_ASSERT(state.rank == 2 && state.rows() == C && state.shape[1] == kernel - 1);
  if (T >= kMatvecRows) {  // every row in parallel, then the state
    conv1d_silu_rows_kernel<<<blocks_for(T * C, 256), 256, 0, stream_>>>(
        x.f32(), x.pitch(), static_cast<int>(T), static_cast<int>(C), w, static_cast<int>(kernel),
        state.f32(), state.pitch(), y.f32(), y.pitch());
    conv_state_kernel<<<blocks_for(C, 128), 128, 0, stream_>>>(
        x.f32(), x.pitch(), static_cast<int>(T), static_cast<int>(C), static_cast<int>(kernel),
        state.f32(), state.pitch());
    check_launch("conv1d_silu");
    return;
  }
  conv1d_silu_kernel<<<blocks_for(C, 128), 128, 0, stream_>>>(
      x.f32(), x.pitch(), static_cast<int>(T), static_cast<int>(C), w, static_cast<int>(kernel),
      state.f32(), state.pitch(), y.f32(), y.pitch());
  check_launch("conv1d_silu");
}

void CudaBackend::route(const Tensor& logits, const RouterSpec& spec, const RouteOutput& out) {
  const OpTimer timer(*this, "route", logits.rows());
  MF_ASSERT(logits.rank == 2 && spec.top_k > 0 && out.k == static_cast<size_t>(spec.top_k));
  const size_t T = logits.rows(), E = logits.shape[1], k = out.k;
  MF_ASSERT(k <= E && k <= 32 && out.ids && out.weights && out.device_weights);
  int32_t* ids = out.device_ids ? out.device_ids : scratch_ids(T * k);
  // The previous route's copies (a recording's side branch) read the device routing this
  // rewrites: joined first (long done by now: a layer of kernels ran since).
  MF_CUDA(join_side_branch());
  if (spec.kind == RouterKind::SigmoidGroupTopK) {
    const size_t G = size_t(spec.n_group);
    MF_ASSERT(spec.bias && G > 0 && G <= 64 && E % G == 0 && E / G >= 2 && spec.topk_group > 0 &&
              spec.topk_group <= spec.n_group && k <= size_t(spec.topk_group) * (E / G));
    route_group_kernel<<<static_cast<unsigned>(T), 32, (2 * E + G) * sizeof(float), stream_>>>(
        logits.f32(), logits.pitch(), int(E), int(k), int(G), spec.topk_group,
        spec.norm_topk_prob ? 1 : 0, spec.routed_scaling_factor, spec.bias, ids,
        out.device_weights);
  } else {
    MF_ASSERT(spec.kind == RouterKind::SoftmaxTopK);
    route_softmax_kernel<<<static_cast<unsigned>(T), 32, E * sizeof(float), stream_>>>(
        logits.f32(), logits.pitch(), static_cast<int>(E), static_cast<int>(k),
        spec.norm_topk_prob ? 1 : 0, ids, out.device_weights);
  }
  check_launch("route");
  // The host's copies. In a recording, on a branch the pass does not wait for (joined at its
  // end); else on the compute stream, where the host waits for them (synchronize()).
  const bool side = capturing_ && side_copies_;
  cudaStream_t cs = stream_;
  if (side) {
    MF_CUDA(cudaEventRecord(route_done_, stream_));
    MF_CUDA(cudaStreamWaitEvent(side_stream_, route_done_, 0));
    side_pending_ = true;  // forked: joined by the next route or the recording's end
    ++rec_stats_.side_branches;
    cs = side_stream_;
    if (side_delay_us_ > 0) {
      delay_kernel<<<1, 1, 0, side_stream_>>>(side_delay_us_);
      check_launch("route (side branch delay)");
    }
  }
  MF_CUDA(cudaMemcpyAsync(out.ids, ids, T * k * sizeof(int32_t), cudaMemcpyDeviceToHost, cs));
  MF_CUDA(cudaMemcpyAsync(out.weights, out.device_weights, T * k * sizeof(float),
                          cudaMemcpyDeviceToHost, cs));
}

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  const OpTimer timer(*this, "copy", src.rows());
  MF_ASSERT(src.rank == dst.rank && src.shape == dst.shape);
  if (src.empty()) return;
  const Vecs s = vecs_of(src), d = vecs_of(dst);
  copy_kernel<<<blocks_for(s.count * s.dim, 256), 256, 0, stream_>>>(s, d);
  check_launch("copy");
}

namespace {

// The operands of combine_kernel / combine_norm_kernel, checked.
CombineRows combine_rows(const CombineArgs& a) {
  const size_t S = a.slots_per_token, K = a.k;
  MF_ASSERT(a.out.rank == 2 && a.slots.rank == 2 && S >= K && S > 0);
  const size_t T = a.out.rows(), H = a.out.shape[1];
  MF_ASSERT(a.slots.rows() >= T * S && a.slots.shape[1] == H && (K == 0 || a.routed));
  MF_ASSERT(a.gate.empty() || (a.gate.rank == 2 && a.gate.rows() == T));
  return {a.slots.f32(),
          a.slots.pitch(),
          static_cast<int>(S),
          a.routed,
          static_cast<int>(K),
          a.gate.empty() ? nullptr : a.gate.f32(),
          a.gate.empty() ? 0 : a.gate.pitch(),
          a.out.f32(),
          a.out.pitch(),
          static_cast<int>(T),
          static_cast<int>(H)};
}

}  // namespace

void CudaBackend::combine(const CombineArgs& a) {
  const OpTimer timer(*this, "combine", a.out.rows());
  const CombineRows rows = combine_rows(a);
  if (rows.T == 0) return;
  combine_kernel<<<blocks_for(size_t(rows.T) * rows.H, 256), 256, 0, stream_>>>(rows);
  check_launch("combine");
}

void CudaBackend::combine_norm(const CombineArgs& a, const float* w, float eps, bool zero_centered,
                               const Tensor& y) {
  if (!fused_combine_norm_) return Backend::combine_norm(a, w, eps, zero_centered, y);
  const OpTimer timer(*this, "combine_norm", a.out.rows());
  const CombineRows rows = combine_rows(a);
  MF_ASSERT(w && y.rank == 2 && y.shape == a.out.shape);
  if (rows.T == 0) return;
  const NormShape ns = norm_shape(rows.H);  // a block per row, as rmsnorm() launches
  with_norm_per(ns.per, [&](auto per) {
    combine_norm_kernel<decltype(per)::value>
        <<<static_cast<unsigned>(rows.T), ns.threads, 0, stream_>>>(
            rows, w, eps, zero_centered ? 1 : 0, y.f32(), y.pitch());
  });
  check_launch("combine_norm");
}

std::unique_ptr<Backend> make_backend(const CudaOptions& opts) {
  return std::make_unique<CudaBackend>(opts.device);
}

bool device_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

}  // namespace moeflux::cuda
