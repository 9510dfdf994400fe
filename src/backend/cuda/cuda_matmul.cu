// Products of stored matrices with float32 activations, every weight format.
//
// Few rows (decode; T <= kMatvecRows): each warp streams 1, 2 or 4 weight rows once with
// 16-byte loads, decodes in registers and accumulates the dot products with all T inputs;
// bandwidth-bound by design. A launch covers a batch of products of one format (blockIdx.y =
// product), so a layer's projections or all of its experts' gate/up take one launch.
//
// More rows (prompts): a tiled GEMM on the tensor cores (mma.sync, bf16 operands split into
// exact terms, float32 accumulation: float32-level accuracy), 64 weight rows x 64 or 32 inputs
// per block, 32 columns at a time decoded into shared memory; one launch covers every product
// of a call. Shapes it cannot take (columns not whole 32-column tiles, misaligned rows) use a
// SIMT GEMM that decodes element by element (float32 FMA, 4 x 4 outputs per thread).
//
// Both add bias, then store, accumulate or apply the SwiGLU epilogues of MatmulMode.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_check.hpp"

namespace moeflux::cuda {

namespace {

constexpr int kWarps = 8;  // rows per matvec block

// The epilogue: v is W x (+ bias); v2 the second product of a dual call.
__device__ __forceinline__ void write_out(const MatmulDesc& d, int t, int row, float v, float v2) {
  float* y = d.y + static_cast<size_t>(d.y_rows ? d.y_rows[t] : t) * d.ldy + row;
  switch (d.mode) {
    case kStore:
      *y = v;
      break;
    case kAccumulate:
      *y += v;
      break;
    case kSwiglu:
      *y = siluf_(*y) * v;
      break;
    default:
      *y = siluf_(v) * v2;
      break;  // kDual
  }
}

// Index of element c of an X row in shared memory: 4 floats of padding after every 32, so that
// lanes reading their chunks (CH consecutive elements each, CH | 32) as float4 hit distinct
// banks within each quarter-warp.
__device__ __forceinline__ int padded(int c) {
  return c + (c >> 5) * 4;
}
__host__ __device__ inline int padded_pitch(int cols) {
  return (cols + (cols >> 5) * 4 + 4) & ~3;
}

// Row t of X into shared memory at xs (the padded layout), by the whole block; float4 copies
// when the row allows them.
__device__ __forceinline__ void stage_x_row(const float* x, int cols, float* xs) {
  if ((cols & 3) == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (int c = 4 * threadIdx.x; c < cols; c += 4 * blockDim.x)
      *reinterpret_cast<float4*>(xs + padded(c)) = x4[c / 4];
  } else {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) xs[padded(c)] = x[c];
  }
}

// Each warp computes R consecutive rows of W (rows [R (8 blockIdx.x + warp), ... + R)), lanes
// splitting the columns in chunks: a lane's loads of one column step, R chunks (2R for a dual
// product), are all issued before any is decoded, so R 16-byte loads per lane are in flight,
// and the first step's loads fly while the block copies X.
// SMEM: the block first copies its T rows of X into shared memory (coalesced), then every lane
// reads its chunk there; otherwise lanes read X from global memory (uncoalesced but cached).
// DUAL: every product of the launch is kDual (two weight matrices), else none is.
template <int CODE, int NT, bool SMEM, int R, bool DUAL>
// descs_written: an earlier kernel wrote the descriptors (device-side routing), so they are
// read only after await_inputs(); otherwise the descriptor and the first column step's weights
// (which never change) are loaded before it, while the kernel before may still run.
// ix.ids set: product blockIdx.y is built from the router's ids (indexed_product; descs unused,
// descs_written true).
__global__ void __launch_bounds__(kWarps * 32)
    matvec_kernel(const MatmulDesc* descs, bool descs_written, IndexedProducts ix) {
  if (descs_written) await_inputs();
  // A copy in registers: the loop's address arithmetic must not reload fields from memory.
  const MatmulDesc d = ix.ids ? indexed_product(ix, blockIdx.y) : descs[blockIdx.y];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = (blockIdx.x * kWarps + warp) * R;
  if (blockIdx.x * kWarps * R >= d.w.rows) {  // the whole block: no barrier is skipped
    if (!descs_written) await_inputs();
    return;
  }
  constexpr int CH = Chunk<CODE>::n;
  constexpr int M = DUAL ? 2 : 1;  // weight matrices
  const int cols = d.w.cols, rows = d.w.rows;
  const float* xr[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t)
    xr[t] = t < d.T ? d.x + static_cast<size_t>(d.x_rows ? d.x_rows[t] : t) * d.ldx : d.x;
  RawChunk raw[M][R];
  auto load_step = [&](int c0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (row0 + r >= rows || c0 >= cols) break;
      raw[0][r] = load_raw<CODE>(d.w, row0 + r, c0);
      if constexpr (DUAL) raw[M - 1][r] = load_raw<CODE>(d.w2, row0 + r, c0);
    }
  };
  load_step(lane * CH);
  if (!descs_written) await_inputs();  // X may be the kernel before's output
  extern __shared__ float4 xs4[];
  float* xs = reinterpret_cast<float*>(xs4);
  const int pc = padded_pitch(cols);
  if constexpr (SMEM) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t >= d.T) break;
      stage_x_row(xr[t], cols, xs + t * pc);
    }
    __syncthreads();
  }
  if (row0 >= rows) return;
  // Per row, matrix and input: the chunk's product (chunk_scale of Σ code x in element order),
  // added to acc once per chunk; the same order whatever R is (results do not depend on the
  // launch shape).
  float acc[M][R][NT];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[m][r][t] = 0.0f;
  for (int c0 = lane * CH; c0 < cols; c0 += 32 * CH) {
    if (c0 != lane * CH) load_step(c0);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t >= d.T) break;
      float s[M][R], sx = 0.0f;  // Σ code x per row and matrix; Σ x (kNeedsXSum)
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) s[m][r] = 0.0f;
      // Four elements of X at a time (one from global memory without SMEM: kGeneric's chunk).
      constexpr int XS = SMEM ? 4 : 1;
#pragma unroll
      for (int i0 = 0; i0 < CH; i0 += XS) {
        float xv[XS];
        if constexpr (SMEM) {
          const float4 v = *reinterpret_cast<const float4*>(xs + t * pc + padded(c0 + i0));
          xv[0] = v.x, xv[1] = v.y, xv[2] = v.z, xv[3] = v.w;
        } else {
          xv[0] = __ldg(xr[t] + c0 + i0);
        }
        if constexpr (kNeedsXSum<CODE>) {
#pragma unroll
          for (int i = 0; i < XS; ++i) sx += xv[i];
        }
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
          for (int r = 0; r < R; ++r)
#pragma unroll
            for (int i = 0; i < XS; ++i)
              s[m][r] = fmaf(chunk_code<CODE>(raw[m][r], i0 + i), xv[i], s[m][r]);
      }
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r][t] += chunk_scale<CODE>(raw[m][r], s[m][r], sx);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = row0 + r;
    if (row >= rows) break;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t >= d.T) break;
      const float v = warp_sum(acc[0][r][t]);
      const float v2 = DUAL ? warp_sum(acc[M - 1][r][t]) : 0.0f;
      if (lane == 0) write_out(d, t, row, v + (d.bias ? d.bias[row] : 0.0f), v2);
    }
  }
}

constexpr int kBM = 64, kBN = 64, kBK = 32;

// Y tile [64 rows of W] x [64 inputs]: blockIdx.x = row tile, blockIdx.y = input tile,
// blockIdx.z = product. 256 threads, each 4 rows x 4 inputs.
__global__ void __launch_bounds__(256) gemm_kernel(const MatmulDesc* descs) {
  await_inputs();
  const MatmulDesc d = descs[blockIdx.z];
  const int row0 = blockIdx.x * kBM, t0 = blockIdx.y * kBN;
  if (row0 >= d.w.rows || t0 >= d.T) return;
  __shared__ float Ws[kBK][kBM + 4];
  __shared__ float Xs[kBK][kBN + 4];
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int lr = tid / 4, lc = (tid % 4) * 8;  // loader: row / input lr, columns lc..lc+7
  const int wrow = row0 + lr, xt = t0 + lr;
  const float* xrow =
      xt < d.T ? d.x + static_cast<size_t>(d.x_rows ? d.x_rows[xt] : xt) * d.ldx : nullptr;
  float acc[4][4] = {};
  const int cols = d.w.cols;
  for (int k0 = 0; k0 < cols; k0 += kBK) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int c = k0 + lc + i;
      const bool in = c < cols;
      Ws[lc + i][lr] = in && wrow < d.w.rows ? decode_elem(d.w, wrow, c) : 0.0f;
      Xs[lc + i][lr] = in && xrow ? xrow[c] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kBK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = Ws[kk][ty * 4 + i], b[i] = Xs[kk][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = row0 + ty * 4 + i;
    if (r >= d.w.rows) continue;
    const float bias = d.bias ? d.bias[r] : 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int t = t0 + tx * 4 + j;
      if (t < d.T) write_out(d, t, r, acc[i][j] + bias, 0.0f);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core GEMM (mma.sync m16n8k16, bf16 operands, float32 accumulation) at float32 accuracy.
//
// Operands: M = rows of W (the A operand, row-major, k contiguous), N = inputs (the B operand,
// "col": k contiguous per input), K = columns. Every operand is a sum of exact bf16 terms:
//   X = X_hi + X_lo, X_hi = bf16(X), X_lo = bf16(X - X_hi): 16 significant bits, relative error
//       at most 2^-17 per element;
//   W: bf16, and the integer codes of Q8_0 and the affine formats (|q| <= 255), are exact in one
//       term; f32 and f16 take two, W_hi + W_lo (f16 exactly: 11 significant bits);
// and a k-tile's product is W_lo X_lo + W_hi X_lo + W_lo X_hi + W_hi X_hi, small terms first,
// summed from zero per k-tile and added into the float32 accumulator outside the MMAs (W_lo X_lo,
// up to 2^-16 of a term, costs f32/f16 weights a fourth MMA). The quantized formats run the MMA
// on the codes and scale per 32-column k-tile (one Q8_0 group, within one affine group), as
// chunk_scale does:
//   acc += s[row, g] P + b[row, g] Σ_k-tile x,  P = Σ_k-tile q x,
// Σ x summed in float32 from the original X while staging (affine only).
//
// Block: 128 threads, 4 warps in 2 x 2, a tile of kTcBM = 64 rows of W x BN inputs (BN 64 or
// 32); each warp 32 rows x BN/2 inputs = 2 m16 x BN/16 n8 MMA tiles. X arrives already split
// into its bf16 terms (split_x_kernel, once per call) and is copied to shared memory with
// cp.async; per step of KS k-tiles of 32 columns W is decoded (load_raw/chunk_code: 16-byte
// loads) into shared memory. KS = 2 (64 columns a step) where every product's K allows it and
// the larger kernel keeps 3/4 of the blocks on an SM: half the barriers and loop overhead per MMA,
// twice the bytes in flight, and an affine 4-bit tile row is two chunks, so all 128 threads
// decode W (with KS = 1 only 64 do). The k-tile remains the unit of scaling and accumulation,
// and split-K splits the columns in whole 64-column steps either way, so KS changes no result
// (bit for bit). Shared rows are 32 KS + 8 bf16
// (16 KS + 4 words): the 8 rows an ldmatrix reads fall on disjoint groups of 4 banks. Two
// buffers: the next step's copies and W loads are issued before the MMAs of this one and W
// stored after them (one barrier per step). blockIdx = (row tile, input tile, product x split of
// K); one kernel per weight format and KS.

constexpr int kTcBM = 64, kTcBK = 32, kTcThreads = 128;
// 32-bit words per shared row of a step of KS k-tiles: 16 KS of bf16 pairs, 4 of padding.
template <int KS>
inline constexpr int kTcWords = 16 * KS + 4;

// WLO: W has a low term (f32, f16); the other formats' kernels leave its buffers out.
template <int BN, bool WLO, int KS>
struct __align__(16) TcSmem {
  static constexpr int W = kTcWords<KS>;
  uint32_t w_hi[2][kTcBM * W], w_lo[2][WLO ? kTcBM * W : 4];  // [row][k], pairs
  uint32_t x_hi[2][BN * W], x_lo[2][BN * W];                  // [input][k]
  float w_s[2][KS][kTcBM], w_b[2][KS][kTcBM];  // scale, bias of each k-tile's group per row
  float x_sum[2][KS][BN];                      // Σ x over each k-tile per input (affine)
};

// Whether W needs a low bf16 term; whether its k-tile partial products are scaled.
template <int CODE>
inline constexpr bool kTcWLo = CODE == kF32 || CODE == kF16;
template <int CODE>
inline constexpr bool kTcScaled = CODE == kQ8 || CODE == kA4 || CODE == kA8;

// Two floats as a bf16 pair, round to nearest (a in the low half: the lower k index).
__device__ __forceinline__ uint32_t pack_bf16(float a, float b) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}
// a = hi.lo16 + lo.lo16, b = hi.hi16 + lo.hi16 to 16 significant bits (a - bf16(a) is exact
// in float32).
__device__ __forceinline__ void split_bf16(float a, float b, uint32_t& hi, uint32_t& lo) {
  hi = pack_bf16(a, b);
  lo = pack_bf16(a - __uint_as_float(hi << 16), b - __uint_as_float(hi & 0xffff0000u));
}

// 16 bytes global -> shared without passing through registers (sm_80+); valid = false fills
// zeros (nothing read). Completed by cp_async_wait_all() (which also covers the commit).
__device__ __forceinline__ void cp_async16(uint32_t* smem, const uint32_t* gmem, bool valid) {
#if __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
#else
  *reinterpret_cast<uint4*>(smem) =
      valid ? *reinterpret_cast<const uint4*>(gmem) : make_uint4(0u, 0u, 0u, 0u);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// X split into the tensor-core GEMM's bf16 terms once per call instead of by every block that
// reads it (each row tile of W re-split the same X: 64 times for a 4096-row projection). One
// thread per four columns; a 32-column k-tile's eight threads are consecutive lanes (K is a
// multiple of 32), whose shuffles sum Σ x exactly as the staging did:
// ((x0 + x1) + (x2 + x3)) per thread, then the eight by halves. blockIdx.y = job.
__global__ void split_x_kernel(const SplitJob* jobs) {
  await_inputs();
  const SplitJob j = jobs[blockIdx.y];
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int per_row = j.K / 4;
  const bool live = i < static_cast<size_t>(j.rows) * per_row;  // no return: all lanes shuffle
  const int r = live ? static_cast<int>(i / per_row) : 0;
  const int c = live ? static_cast<int>(i % per_row) * 4 : 0;
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (live) {
    const float* p = j.x + static_cast<size_t>(r) * j.ldx + c;
    v = (reinterpret_cast<uintptr_t>(p) & 15) == 0 ? __ldg(reinterpret_cast<const float4*>(p))
                                                   : make_float4(p[0], p[1], p[2], p[3]);
  }
  uint32_t hi[2], lo[2];
  split_bf16(v.x, v.y, hi[0], lo[0]);
  split_bf16(v.z, v.w, hi[1], lo[1]);
  float sum = (v.x + v.y) + (v.z + v.w);
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  sum += __shfl_xor_sync(0xffffffffu, sum, 2);
  sum += __shfl_xor_sync(0xffffffffu, sum, 4);
  if (!live) return;
  uint32_t* row = j.xs + static_cast<size_t>(r) * j.K;
  *reinterpret_cast<uint2*>(row + c / 2) = make_uint2(hi[0], hi[1]);
  *reinterpret_cast<uint2*>(row + j.K / 2 + c / 2) = make_uint2(lo[0], lo[1]);
  if (c % kTcBK == 0) j.xsum[static_cast<size_t>(r) * (j.K / kTcBK) + c / kTcBK] = sum;
}

// Four 8 x 8 bf16 matrices from shared memory (rows of 16 bytes at 16-byte aligned addresses):
// register j of lane l holds row l / 4, elements 2 (l % 4) and + 1 of matrix j, whose row
// addresses lanes 8 j .. 8 j + 7 gave.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint32_t* row) {
#if __CUDA_ARCH__ >= 800
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  (void)row;
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();  // never launched: gemm_kernel_for() requires sm_80
#endif
}

// C (16 x 8, float32) += A (16 x 16, row) B (16 x 8, col). Fragments (g = lane / 4,
// q = lane % 4; pairs along k, lower k in the low half): a = {(g, 2q), (g + 8, 2q),
// (g, 2q + 8), (g + 8, 2q + 8)} as (row, k); b = {(2q, g), (2q + 8, g)} as (k, col);
// c = {(g, 2q), (g, 2q + 1), (g + 8, 2q), (g + 8, 2q + 1)} as (row, col).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]) {
#if __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  (void)c, (void)a, (void)b;
  __trap();  // never launched: gemm_kernel_for() requires sm_80
#endif
}

// One block's tile of one product, W of format CODE.
// Part of a product a block computes: its k-tiles [kt0, kt1); part: where it stores its sums
// (row r of input t at part[t * part_ld + r], no bias) when the columns are split across
// blocks, else null (write_out).
struct TcSplit {
  int kt0, kt1;
  float* part;
  int part_ld;
};

// sp's k-tiles [kt0, kt1) are whole steps of KS k-tiles.
template <int CODE, int BN, int KS>
__device__ __forceinline__ void tc_gemm_tile(const MatmulDesc& d, TcSmem<BN, kTcWLo<CODE>, KS>& sm,
                                             int row0, int t0, const TcSplit sp) {
  constexpr int kWords = kTcWords<KS>, kStep = KS * kTcBK;  // shared row words; step columns
  constexpr int CH = Chunk<CODE>::n, CPR = kStep / CH;      // W chunks per tile row
  constexpr int W_CHUNKS = kTcBM * CPR;
  constexpr int WPT = (W_CHUNKS + kTcThreads - 1) / kTcThreads;  // W chunks per thread
  constexpr int XC = 8 * KS;                 // 16-byte chunks of split X per input (hi, lo)
  constexpr int XPT = BN * XC / kTcThreads;  // ... per thread
  constexpr int NI = BN / 16;                // n8 tiles per warp
  static_assert(XPT >= 1 && BN * XC % kTcThreads == 0 && NI % 2 == 0);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, q = lane % 4;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * (BN / 2);  // the warp's rows and inputs
  const int rows = d.w.rows, T = d.T, K = d.w.cols;

  // X staging from its split terms (split_x_kernel): chunk e = tid + i * 128 is input e / XC,
  // words 4 (e % (XC / 2)) .. + 3 of the step's 16 KS, of the high terms for e % XC < XC / 2,
  // else the low ones (e % XC = tid % XC: one half per thread). Copied asynchronously; inputs
  // past T are zero-filled.
  // Sources as word offsets from d.xs (32 bits: fewer registers than pointers), -1 past T.
  const bool x_low = tid % XC >= XC / 2;
  int xsrc[XPT], xdst[XPT];
#pragma unroll
  for (int i = 0; i < XPT; ++i) {
    const int e = tid + i * kTcThreads, t = t0 + e / XC;
    xsrc[i] =
        t < T ? (d.x_rows ? d.x_rows[t] : t) * K + (x_low ? K / 2 : 0) + (e % (XC / 2)) * 4 : -1;
    xdst[i] = (e / XC) * kWords + (e % (XC / 2)) * 4;
  }
  // Σ x of each k-tile per input (affine formats): thread t < BN loads input t's.
  const float* xsum_row = nullptr;
  if constexpr (kNeedsXSum<CODE>) {
    const int t = t0 + tid;
    if (tid < BN && t < T)
      xsum_row = d.xsum + static_cast<size_t>(d.x_rows ? d.x_rows[t] : t) * (K / kTcBK);
  }
  float xsum_v[KS] = {};

  RawChunk raw[WPT];
  auto load = [&](int k0, int buf) {
#pragma unroll
    for (int i = 0; i < WPT; ++i) {
      const int e = tid + i * kTcThreads, r = row0 + e / CPR;
      raw[i] = e < W_CHUNKS && r < rows ? load_raw<CODE>(d.w, r, k0 + (e % CPR) * CH) : RawChunk{};
    }
    uint32_t* xt = x_low ? sm.x_lo[buf] : sm.x_hi[buf];
#pragma unroll
    for (int i = 0; i < XPT; ++i)
      cp_async16(xt + xdst[i], d.xs + (xsrc[i] >= 0 ? xsrc[i] + k0 / 2 : 0), xsrc[i] >= 0);
    cp_async_commit();
    if constexpr (kNeedsXSum<CODE>) {
#pragma unroll
      for (int j = 0; j < KS; ++j) xsum_v[j] = xsum_row ? __ldg(xsum_row + k0 / kTcBK + j) : 0.0f;
    }
  };
  // A zero RawChunk decodes to 0 in every format: rows past the end contribute nothing.
  auto store = [&](int buf) {
#pragma unroll
    for (int i = 0; i < WPT; ++i) {
      const int e = tid + i * kTcThreads;
      if (e >= W_CHUNKS) break;
      const int r = e / CPR, c = (e % CPR) * CH;
      uint32_t hi[CH / 2], lo[CH / 2];
#pragma unroll
      for (int j = 0; j < CH / 2; ++j) {
        if constexpr (CODE == kBF16) {
          const uint32_t v[4] = {raw[i].v.x, raw[i].v.y, raw[i].v.z, raw[i].v.w};
          hi[j] = v[j];  // the stored pair as it is
        } else {
          const float a = chunk_code<CODE>(raw[i], 2 * j), b = chunk_code<CODE>(raw[i], 2 * j + 1);
          if constexpr (kTcWLo<CODE>)
            split_bf16(a, b, hi[j], lo[j]);
          else
            hi[j] = pack_bf16(a, b);  // exact: integer codes, |q| <= 255
        }
      }
      uint32_t* wh = sm.w_hi[buf] + r * kWords + c / 2;
      uint32_t* wl = nullptr;
      if constexpr (kTcWLo<CODE>) wl = sm.w_lo[buf] + r * kWords + c / 2;
      if constexpr (CH == 4) {  // f32: always a low term
        *reinterpret_cast<uint2*>(wh) = make_uint2(hi[0], hi[1]);
        *reinterpret_cast<uint2*>(wl) = make_uint2(lo[0], lo[1]);
      } else {
#pragma unroll
        for (int j = 0; j < CH / 2; j += 4) {
          *reinterpret_cast<uint4*>(wh + j) = make_uint4(hi[j], hi[j + 1], hi[j + 2], hi[j + 3]);
          if constexpr (kTcWLo<CODE>)
            *reinterpret_cast<uint4*>(wl + j) = make_uint4(lo[j], lo[j + 1], lo[j + 2], lo[j + 3]);
        }
      }
      if constexpr (kTcScaled<CODE>) {  // the k-tile's first chunk (a k-tile is in one group)
        if (c % kTcBK == 0)
          sm.w_s[buf][c / kTcBK][r] = raw[i].s, sm.w_b[buf][c / kTcBK][r] = raw[i].b;
      }
    }
    if constexpr (kNeedsXSum<CODE>) {
      if (tid < BN) {
#pragma unroll
        for (int j = 0; j < KS; ++j) sm.x_sum[buf][j][tid] = xsum_v[j];
      }
    }
  };

  float acc[2][NI][4] = {};
  // k-tile kt of the step in buffer buf (shared words 16 kt ...).
  auto compute = [&](int buf, int kt) {
    // The k-tile's products P, summed by the MMAs from zero, then added into acc on the FP32
    // units (scaled formats: scaled first). The MMAs' accumulation truncates (does not round)
    // its sum to the accumulator's exponent: run over all of K into one accumulator, that bias
    // toward zero grew with K (2.5e-5 of the largest output at K = 4096, failing the CPU twin's
    // 2e-5 bound); over one k-tile it stays at the partial's size.
    float part[2][NI][4] = {};
    float(&c)[2][NI][4] = part;
#pragma unroll
    for (int ks = 16 * kt; ks < 16 * kt + kTcBK / 2; ks += 8) {  // two k16 steps, 8 words each
      uint32_t ah[2][4], al[2][4], bh[NI][2], bl[NI][2];
      // Fragments by ldmatrix (8 x 8 matrices of bf16; lane l gives the address of row l % 8 of
      // matrix l / 8). A: matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15) in the order a[0..3];
      // B: (inputs of n8 tile ni | ni + 1) x (k 0-7 | 8-15), b[ni][0..1], b[ni + 1][0..1].
      const int m = lane / 8, mr = lane % 8;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int o = (wm + mi * 16 + (m % 2) * 8 + mr) * kWords + ks + (m / 2) * 4;
        ldmatrix_x4(ah[mi], sm.w_hi[buf] + o);
        if constexpr (kTcWLo<CODE>) ldmatrix_x4(al[mi], sm.w_lo[buf] + o);
      }
#pragma unroll
      for (int ni = 0; ni < NI; ni += 2) {
        const int o = (wn + (ni + m / 2) * 8 + mr) * kWords + ks + (m % 2) * 4;
        uint32_t r[4];
        ldmatrix_x4(r, sm.x_hi[buf] + o);
        bh[ni][0] = r[0], bh[ni][1] = r[1], bh[ni + 1][0] = r[2], bh[ni + 1][1] = r[3];
        ldmatrix_x4(r, sm.x_lo[buf] + o);
        bl[ni][0] = r[0], bl[ni][1] = r[1], bl[ni + 1][0] = r[2], bl[ni + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
          if constexpr (kTcWLo<CODE>) mma_bf16(c[mi][ni], al[mi], bl[ni]);
          mma_bf16(c[mi][ni], ah[mi], bl[ni]);
          if constexpr (kTcWLo<CODE>) mma_bf16(c[mi][ni], al[mi], bh[ni]);
          mma_bf16(c[mi][ni], ah[mi], bh[ni]);
        }
    }
    if constexpr (kTcScaled<CODE>) {
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // rows g and g + 8 of the m16 tile
          const int r = wm + mi * 16 + g + 8 * h;
          const float s = sm.w_s[buf][kt][r], b = sm.w_b[buf][kt][r];
#pragma unroll
          for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              const float p = part[mi][ni][2 * h + j];
              if constexpr (kNeedsXSum<CODE>)
                acc[mi][ni][2 * h + j] +=
                    fmaf(s, p, b * sm.x_sum[buf][kt][wn + ni * 8 + 2 * q + j]);
              else
                acc[mi][ni][2 * h + j] += s * p;
            }
        }
    } else {
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[mi][ni][j] += part[mi][ni][j];
    }
  };

  load(sp.kt0 * kTcBK, 0);
  store(0);
  cp_async_wait_all();
  __syncthreads();
  for (int kt = sp.kt0; kt < sp.kt1; kt += KS) {
    // Buffer (kt - kt0) / KS % 2 holds the step at k-tile kt; the other was last read before
    // the previous barrier, so the next step's X may be copied into it while this one computes.
    const int buf = (kt - sp.kt0) / KS % 2;
    const bool next = kt + KS < sp.kt1;
    if (next) load((kt + KS) * kTcBK, buf ^ 1);
#pragma unroll 1  // unrolled, the k-tiles' fragments stay live together: registers, occupancy
    for (int j = 0; j < KS; ++j) compute(buf, j);  // k-tile by k-tile, in order
    if (next) store(buf ^ 1);
    cp_async_wait_all();
    __syncthreads();
  }

#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + wm + mi * 16 + g + 8 * h;
      if (r >= rows) continue;
      const float bias = d.bias ? d.bias[r] : 0.0f;
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int t = t0 + wn + ni * 8 + 2 * q + j;
          if (t >= T) continue;
          if (sp.part)
            sp.part[static_cast<size_t>(t) * sp.part_ld + r] = acc[mi][ni][2 * h + j];
          else
            write_out(d, t, r, acc[mi][ni][2 * h + j] + bias, 0.0f);
        }
    }
}

// blockIdx.z = product * splits + split: with splits > 1, split s of a product computes its
// share of the k-tiles and stores the sums in partial, slab z of part_t x part_rows floats
// (splitk_reduce_kernel finishes the product). One kernel per weight format: the registers and
// shared memory are each format's own (one kernel switching over all took the f32 path's 168
// registers a thread and 42.5 KB a block for every format). KS: k-tiles per step (2: every
// product's K a multiple of 64). The shared tiles are dynamic shared memory (over 48 KB at BN 64,
// KS 2: launch_tc opts in). split_step: each split's k-tiles a multiple of it (2 wherever every
// K is a multiple of 64, whatever KS: so that KS = 1 and 2 split the columns alike and give the
// same results bit for bit).
template <int BN, int CODE, int KS>
__global__ void __launch_bounds__(kTcThreads)
    tc_gemm_kernel(const MatmulDesc* descs, int splits, float* partial, int part_rows, int part_t,
                   int split_step) {
  await_inputs();
  extern __shared__ float4 tc_smem[];
  auto& sm = *reinterpret_cast<TcSmem<BN, kTcWLo<CODE>, KS>*>(tc_smem);
  const MatmulDesc d = descs[blockIdx.z / splits];
  const int row0 = blockIdx.x * kTcBM, t0 = blockIdx.y * BN;
  if (row0 >= d.w.rows || t0 >= d.T) return;  // the whole block: no barrier is skipped
  // X not split (split_inputs), or a product of another format in the launch.
  if (d.xs == nullptr || d.xsum == nullptr || d.w.code != CODE) __trap();
  const int k_tiles = d.w.cols / kTcBK, s = blockIdx.z % splits;
  // launch_tc_gemm takes KS = 2 (and a split step of 2) only for whole 64-column steps.
  if (k_tiles % split_step != 0 || split_step % KS != 0) __trap();
  const int per = ((k_tiles + splits - 1) / splits + split_step - 1) / split_step * split_step;
  TcSplit sp{s * per, min(k_tiles, (s + 1) * per), nullptr, part_rows};
  if (splits > 1) {
    sp.part = partial + static_cast<size_t>(blockIdx.z) * part_t * part_rows;
    if (sp.kt0 >= sp.kt1) {  // no k-tiles left for this split: its share is zero
      for (int i = threadIdx.x; i < BN * kTcBM; i += kTcThreads) {
        const int t = t0 + i / kTcBM, r = row0 + i % kTcBM;
        if (t < d.T && r < d.w.rows) sp.part[static_cast<size_t>(t) * part_rows + r] = 0.0f;
      }
      return;
    }
  }
  tc_gemm_tile<CODE, BN, KS>(d, sm, row0, t0, sp);
}

// Finishes products whose columns were split across `splits` blocks: y = Σ_s partial_s + bias,
// summed in split order, through write_out. blockIdx.y = product; one thread per (t, r).
__global__ void splitk_reduce_kernel(const MatmulDesc* descs, int splits, const float* partial,
                                     int part_rows, int part_t) {
  await_inputs();
  const MatmulDesc d = descs[blockIdx.y];
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int t = static_cast<int>(i / part_rows), r = static_cast<int>(i % part_rows);
  if (t >= d.T || r >= d.w.rows) return;
  const size_t slab = static_cast<size_t>(part_t) * part_rows;
  const float* p = partial + blockIdx.y * splits * slab + static_cast<size_t>(t) * part_rows + r;
  float v = 0.0f;
  for (int s = 0; s < splits; ++s) v += p[s * slab];
  write_out(d, t, r, v + (d.bias ? d.bias[r] : 0.0f), 0.0f);
}

// The vector path needs whole 16-byte chunks: rows a multiple of the chunk, 16-byte aligned.
bool vector_path_ok(const DevMat& m, int chunk) {
  return m.cols % chunk == 0 && m.row_bytes % 16 == 0 &&
         reinterpret_cast<uintptr_t>(m.data) % 16 == 0;
}

// An attribute of the current device, or `fallback` when it cannot be read.
int device_attribute(cudaDeviceAttr attr, int fallback) {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, attr, dev) != cudaSuccess) {
    cudaGetLastError();
    return fallback;
  }
  return v;
}

// Shared memory a block may have when its kernel opts in (the device's limit; 48 KB without).
size_t opt_in_smem_limit() {
  static const size_t limit =
      size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 * 1024));
  return limit;
}

// Launches matvec_kernel with `smem` bytes of dynamic shared memory, opting the kernel into
// more than 48 KB first when it needs that (once per kernel and size reached).
// A matrix-vector launch's products: descriptors in device memory (written: by an earlier
// kernel), or built by each block from the router's ids (ix.ids set).
struct MatvecLaunch {
  const MatmulDesc* descs;
  bool written;
  IndexedProducts ix;
};

template <int CODE, int NT, int R, bool DUAL>
void launch_staged(const MatvecLaunch& L, dim3 grid, size_t smem, cudaStream_t s) {
  static std::atomic<size_t> opted{48 * 1024};
  if (smem > opted.load(std::memory_order_relaxed)) {
    MF_CUDA(cudaFuncSetAttribute(matvec_kernel<CODE, NT, true, R, DUAL>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    opted.store(smem, std::memory_order_relaxed);
  }
  matvec_kernel<CODE, NT, true, R, DUAL><<<grid, kWarps * 32, smem, s>>>(L.descs, L.written, L.ix);
}

template <int CODE, int NT, int R>
void launch_matvec_r(const MatvecLaunch& L, int n, int max_rows, int max_cols, bool dual,
                     cudaStream_t s) {
  const dim3 grid(blocks_for(max_rows, kWarps * R), n);
  const size_t smem = size_t(NT) * padded_pitch(max_cols) * sizeof(float);
  if constexpr (CODE != kGeneric) {
    if (smem <= opt_in_smem_limit()) {  // X staged in shared memory
      if (dual)
        launch_staged<CODE, NT, R, true>(L, grid, smem, s);
      else
        launch_staged<CODE, NT, R, false>(L, grid, smem, s);
      return;
    }
  }
  if (dual)
    matvec_kernel<CODE, NT, false, R, true><<<grid, kWarps * 32, 0, s>>>(L.descs, L.written, L.ix);
  else
    matvec_kernel<CODE, NT, false, R, false><<<grid, kWarps * 32, 0, s>>>(L.descs, L.written, L.ix);
}

// Rows per warp: as many as keep at least two blocks per SM of an H100/H200-sized GPU busy
// (more rows per warp: more loads in flight per lane, X copied once for more rows). Up to 4
// for one row of X, 2 for two (not dual); more rows of X already give each lane that much
// work per load, and more registers would spill (ptxas -v: A4, one row of X, 4 rows per warp:
// 75 registers, dual 119; two rows of X, dual, 2 rows per warp: 227).
template <int CODE, int NT>
void launch_matvec_nt(const MatvecLaunch& L, int n, int max_rows, size_t sum_rows, int max_cols,
                      bool dual, cudaStream_t s) {
  constexpr size_t kEnoughBlocks = 264;  // blocks with rows to compute (not the grid's size)
  auto enough = [&](int r) { return blocks_for(sum_rows, kWarps * r) >= kEnoughBlocks; };
  if constexpr (NT == 1 && CODE != kGeneric) {
    if (enough(4)) return launch_matvec_r<CODE, NT, 4>(L, n, max_rows, max_cols, dual, s);
    if (enough(2)) return launch_matvec_r<CODE, NT, 2>(L, n, max_rows, max_cols, dual, s);
  } else if constexpr (NT == 2 && CODE != kGeneric) {
    if (!dual && enough(2)) return launch_matvec_r<CODE, NT, 2>(L, n, max_rows, max_cols, dual, s);
  }
  launch_matvec_r<CODE, NT, 1>(L, n, max_rows, max_cols, dual, s);
}

template <int CODE>
void launch_matvec_code(const MatvecLaunch& L, int n, int max_rows, size_t sum_rows, int max_t,
                        int max_cols, bool dual, cudaStream_t s) {
  if (max_t <= 1)
    launch_matvec_nt<CODE, 1>(L, n, max_rows, sum_rows, max_cols, dual, s);
  else if (max_t <= 2)
    launch_matvec_nt<CODE, 2>(L, n, max_rows, sum_rows, max_cols, dual, s);
  else if (max_t <= 4)
    launch_matvec_nt<CODE, 4>(L, n, max_rows, sum_rows, max_cols, dual, s);
  else
    launch_matvec_nt<CODE, 8>(L, n, max_rows, sum_rows, max_cols, dual, s);
}

}  // namespace

void launch_matvec(int code, const MatmulDesc* dev, int n, int max_rows, size_t sum_rows, int max_t,
                   int max_cols, bool dual, cudaStream_t s, bool descs_written,
                   const IndexedProducts* ix) {
  MF_ASSERT(ix == nullptr || (descs_written && ix->ids != nullptr && max_t == 1));
  const MatvecLaunch L{dev, descs_written, ix ? *ix : IndexedProducts{}};
  switch (code) {
    case kF32:
      launch_matvec_code<kF32>(L, n, max_rows, sum_rows, max_t, max_cols, dual, s);
      break;
    case kF16:
      launch_matvec_code<kF16>(L, n, max_rows, sum_rows, max_t, max_cols, dual, s);
      break;
    case kBF16:
      launch_matvec_code<kBF16>(L, n, max_rows, sum_rows, max_t, max_cols, dual, s);
      break;
    case kQ8:
      launch_matvec_code<kQ8>(L, n, max_rows, sum_rows, max_t, max_cols, dual, s);
      break;
    case kA4:
      launch_matvec_code<kA4>(L, n, max_rows, sum_rows, max_t, max_cols, dual, s);
      break;
    case kA8:
      launch_matvec_code<kA8>(L, n, max_rows, sum_rows, max_t, max_cols, dual, s);
      break;
    default:
      launch_matvec_code<kGeneric>(L, n, max_rows, sum_rows, max_t, max_cols, dual, s);
      break;
  }
  check_launch("matvec");
}

int matvec_code(const DevMat& w, const DevMat* w2) {
  const int chunk = w.code == kF32                      ? 4
                    : w.code == kF16 || w.code == kBF16 ? 8
                    : w.code == kQ8 || w.code == kA8    ? 16
                                                        : 32;
  bool ok = vector_path_ok(w, chunk);
  if (w2) ok = ok && w2->code == w.code && vector_path_ok(*w2, chunk);
  return ok ? w.code : static_cast<int>(kGeneric);
}

namespace {

// Whether the device runs mma.sync with bf16 operands (sm_80 and later).
bool tensor_cores_present() {
  static const bool present = device_attribute(cudaDevAttrComputeCapabilityMajor, 0) >= 8;
  return present;
}

// The GEMM kernel of a product: the tensor-core one when W is whole 32-column k-tiles (a k-tile
// is one Q8_0 group and lies within one affine group) in 16-byte aligned rows (load_raw's
// chunks) on an sm_80+ device; else the SIMT one, which decodes element by element. X needs
// nothing: the tensor kernel reads its split terms (split_x_kernel handles any pitch).
// The tensor-core kernels are one per format: kTensorGemm + the format's code.
enum GemmKernel : int { kSimtGemm = kGeneric, kTensorGemm = kGeneric + 1 };

}  // namespace

bool is_tensor_gemm(int kernel) {
  return kernel >= kTensorGemm;
}

int gemm_kernel_for(const DevMat& w, bool base_aligned) {
  const bool tiles =
      w.cols % kTcBK == 0 && ((w.code != kA4 && w.code != kA8) || w.group % kTcBK == 0);
  const bool aligned =
      base_aligned && w.row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
  return tiles && aligned && tensor_cores_present() ? kTensorGemm + w.code : kSimtGemm;
}

int gemm_tile_width(size_t tiles32, size_t tiles64) {
  constexpr size_t kDecode = 64;
  return tiles32 * (kDecode + 32) < tiles64 * (kDecode + 64) ? 32 : 64;
}

namespace {

// k-tiles a step of the tensor-core GEMM where every K is a multiple of 64: 0 (default: two
// where that keeps 3/4 of the blocks on an SM that one does, tc_two_steps_fit), or 1 or 2 as
// MOEFLUX_CUDA_GEMM_KSTEP says (to compare; read at every launch, so that a test compares both).
int gemm_kstep_asked() {
  return env_is("MOEFLUX_CUDA_GEMM_KSTEP", "1")   ? 1
         : env_is("MOEFLUX_CUDA_GEMM_KSTEP", "2") ? 2
                                                  : 0;
}

// tc_gemm_kernel<BN, CODE, KS>'s shared memory, the kernel opted into it first when over the
// default 48 KB (once per kernel: one device per process, as launch_staged assumes).
template <int BN, int CODE, int KS>
size_t tc_smem() {
  constexpr size_t kSmem = sizeof(TcSmem<BN, kTcWLo<CODE>, KS>);
  if constexpr (kSmem > 48 * 1024) {
    static const bool opted = [] {
      MF_CUDA(cudaFuncSetAttribute(tc_gemm_kernel<BN, CODE, KS>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)));
      return true;
    }();
    (void)opted;
  }
  return kSmem;
}

// Whether two k-tiles a step keep at least 3/4 of the blocks one k-tile keeps on an SM (their
// registers and shared memory are larger). On sm_90 the 4-bit 32-input kernel goes from 95 to
// 120 registers, 5 blocks to 4, and is 9% faster over a 512-token prompt for it (H100, docs/
// PERF.md); on sm_86/89 the 64-input one would fit one block instead of three.
template <int BN, int CODE>
bool tc_two_steps_fit() {
  static const bool fit = [] {
    int one = 0, two = 0;
    MF_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&one, tc_gemm_kernel<BN, CODE, 1>,
                                                          kTcThreads, tc_smem<BN, CODE, 1>()));
    MF_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&two, tc_gemm_kernel<BN, CODE, 2>,
                                                          kTcThreads, tc_smem<BN, CODE, 2>()));
    return two > 0 && 4 * two >= 3 * one;
  }();
  return fit;
}

template <int BN, int CODE, int KS>
void launch_tc(dim3 grid, const MatmulDesc* dev, int max_rows, int max_t, cudaStream_t s,
               const GemmSplit& sp, int split_step) {
  tc_gemm_kernel<BN, CODE, KS><<<grid, kTcThreads, tc_smem<BN, CODE, KS>(), s>>>(
      dev, sp.splits, sp.partial, max_rows, max_t, split_step);
}

template <int BN>
void launch_tc_gemm(int code, const MatmulDesc* dev, int n, int max_rows, int max_t, cudaStream_t s,
                    const GemmSplit& sp, bool k64) {
  MF_ASSERT(size_t(n) * sp.splits <= 65535);  // grid z (products x splits)
  const dim3 grid(blocks_for(max_rows, kTcBM), blocks_for(max_t, BN), unsigned(n * sp.splits));
  // Two k-tiles a step where every K allows it, for the formats whose W is one bf16 term (f32
  // and f16 carry a low term: twice the registers and shared memory a step), where that costs
  // at most a quarter of the occupancy (or as MOEFLUX_CUDA_GEMM_KSTEP asks). The columns split
  // alike either way.
  const int split_step = k64 ? 2 : 1, asked = gemm_kstep_asked();
  auto go = [&](auto code_c) {
    constexpr int C = decltype(code_c)::value;
    bool two = false;
    if constexpr (!kTcWLo<C>) two = k64 && (asked == 0 ? tc_two_steps_fit<BN, C>() : asked == 2);
    if (two)
      launch_tc<BN, C, 2>(grid, dev, max_rows, max_t, s, sp, split_step);
    else
      launch_tc<BN, C, 1>(grid, dev, max_rows, max_t, s, sp, split_step);
  };
  switch (code) {
    case kF32:
      return go(std::integral_constant<int, kF32>{});
    case kF16:
      return go(std::integral_constant<int, kF16>{});
    case kBF16:
      return go(std::integral_constant<int, kBF16>{});
    case kQ8:
      return go(std::integral_constant<int, kQ8>{});
    case kA4:
      return go(std::integral_constant<int, kA4>{});
    case kA8:
      return go(std::integral_constant<int, kA8>{});
    default:
      fail("CUDA backend: a tensor-core GEMM of an unknown format");
  }
}

}  // namespace

void launch_gemm(int kernel, const MatmulDesc* dev, int n, int max_rows, int max_t, int bn,
                 bool k64, cudaStream_t s, const GemmSplit& split) {
  if (is_tensor_gemm(kernel)) {
    if (bn == 32)
      launch_tc_gemm<32>(kernel - kTensorGemm, dev, n, max_rows, max_t, s, split, k64);
    else
      launch_tc_gemm<64>(kernel - kTensorGemm, dev, n, max_rows, max_t, s, split, k64);
    check_launch("gemm");
    if (split.splits > 1) {
      const dim3 grid(blocks_for(size_t(max_rows) * max_t, 256), unsigned(n));
      splitk_reduce_kernel<<<grid, 256, 0, s>>>(dev, split.splits, split.partial, max_rows, max_t);
      check_launch("gemm (split reduction)");
    }
  } else {
    MF_ASSERT(split.splits == 1);
    const dim3 grid(blocks_for(max_rows, kBM), blocks_for(max_t, kBN), n);
    gemm_kernel<<<grid, 256, 0, s>>>(dev);
    check_launch("gemm");
  }
}

namespace {

// Splits of the columns for a launch of `kernel` over `descs` in tiles of bn inputs: 1 unless
// the tensor-core GEMM would have too few blocks for the SMs.
int gemm_splits(int kernel, std::span<const MatmulDesc> descs, int bn) {
  if (!is_tensor_gemm(kernel)) return 1;
  static const size_t sms = size_t(device_attribute(cudaDevAttrMultiProcessorCount, 1));
  size_t blocks = 0;
  int k_tiles = std::numeric_limits<int>::max();
  for (const MatmulDesc& d : descs) {
    blocks += size_t(blocks_for(d.w.rows, kTcBM)) * blocks_for(d.T, bn);
    k_tiles = std::min(k_tiles, d.w.cols / kTcBK);
  }
  // Enough blocks to keep every SM's 3-4 resident blocks busy; each split at least 4 k-tiles.
  const size_t want = 4 * sms;
  if (blocks == 0 || blocks * 2 > want) return 1;
  return int(std::clamp<size_t>((want + blocks - 1) / blocks, 1, size_t(std::max(1, k_tiles / 4))));
}

}  // namespace

void CudaBackend::split_inputs(std::span<MatmulDesc> g) {
  // Each distinct X (pointer, pitch, rows, columns) split once into xsplit_scratch_: its terms,
  // then its sums, each region 256-byte aligned.
  struct Key {
    const float* x;
    int ldx, rows, K;
    size_t offset;
  };
  thread_local std::vector<Key> keys;
  thread_local std::vector<size_t> key_of;
  thread_local std::vector<SplitJob> jobs;
  keys.clear();
  key_of.resize(g.size());
  auto region = [](size_t b) { return (b + 255) / 256 * 256; };
  size_t bytes = 0, most = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const MatmulDesc& d = g[i];
    const int rows = d.x_rows ? d.x_count : d.T, K = d.w.cols;
    // The GEMM addresses split X by 32-bit word offsets (rows * K words).
    MF_ASSERT(rows > 0 && K % kTcBK == 0 && size_t(rows) * K < (size_t(1) << 31));
    size_t k = 0;
    while (k < keys.size() &&
           !(keys[k].x == d.x && keys[k].ldx == d.ldx && keys[k].rows == rows && keys[k].K == K))
      ++k;
    if (k == keys.size()) {
      keys.push_back({d.x, d.ldx, rows, K, bytes});
      bytes += region(size_t(rows) * K * 4) + region(size_t(rows) * (K / kTcBK) * 4);
      most = std::max(most, size_t(rows) * K / 4);
    }
    key_of[i] = k;
  }
  auto* base = static_cast<uint8_t*>(xsplit_scratch_.get(bytes, stream_));
  jobs.clear();
  for (const Key& k : keys) {
    SplitJob j;
    j.x = k.x;
    j.ldx = k.ldx;
    j.rows = k.rows;
    j.K = k.K;
    j.xs = reinterpret_cast<uint32_t*>(base + k.offset);
    j.xsum = reinterpret_cast<float*>(base + k.offset + region(size_t(k.rows) * k.K * 4));
    jobs.push_back(j);
  }
  for (size_t i = 0; i < g.size(); ++i) {
    g[i].xs = jobs[key_of[i]].xs;
    g[i].xsum = jobs[key_of[i]].xsum;
  }
  // stage_or_keep: a recording cannot stage (a recorded batched step would reach here).
  const auto* dev =
      static_cast<const SplitJob*>(stage_or_keep(jobs.data(), jobs.size() * sizeof(SplitJob)));
  split_x_kernel<<<dim3(blocks_for(most, 256), unsigned(jobs.size())), 256, 0, stream_>>>(dev);
  check_launch("split_x");
}

void CudaBackend::split_rows(const float* x, int ldx, int rows, int K, uint32_t* xs, float* xsum) {
  MF_ASSERT(size_t(rows) * K < (size_t(1) << 31));  // the GEMM's 32-bit word offsets
  SplitJob j;
  j.x = x;
  j.ldx = ldx;
  j.rows = rows;
  j.K = K;
  j.xs = xs;
  j.xsum = xsum;
  const auto* dev = static_cast<const SplitJob*>(stage_or_keep(&j, sizeof j));
  split_x_kernel<<<dim3(blocks_for(size_t(rows) * K / 4, 256), 1), 256, 0, stream_>>>(dev);
  check_launch("split_x");
}

void CudaBackend::run_matmuls(std::span<const MatmulDesc> descs, bool reused) {
  // Launch groups: products of one kernel (matrix-vector: format code, vector or generic
  // path, dual or not; GEMM: tensor-core or SIMT, each for every format), in the order given
  // within a group. Products in one call write disjoint outputs, except kSwiglu, which must
  // follow the product that stored its Y (callers issue those in separate calls).
  std::vector<MatmulDesc>& g = group_;
  std::vector<char>& done = done_;  // reused: no allocation per call once warm
  done.assign(descs.size(), 0);
  for (size_t i = 0; i < descs.size(); ++i) {
    if (done[i]) continue;
    const bool gemm = descs[i].T > kMatvecRows;
    auto code_of = [&](const MatmulDesc& d) {
      return gemm ? gemm_kernel_for(d.w) : matvec_code(d.w, d.mode == kDual ? &d.w2 : nullptr);
    };
    const int code = code_of(descs[i]);
    const bool dual = descs[i].mode == kDual;
    g.clear();
    int max_rows = 0, max_t = 0, max_cols = 0;
    size_t sum_rows = 0, tiles32 = 0, tiles64 = 0;
    for (size_t j = i; j < descs.size(); ++j) {
      if (done[j] || (descs[j].T > kMatvecRows) != gemm || code_of(descs[j]) != code ||
          (descs[j].mode == kDual) != dual)
        continue;
      done[j] = 1;
      g.push_back(descs[j]);
      max_rows = std::max(max_rows, descs[j].w.rows);
      sum_rows += size_t(descs[j].w.rows);
      max_t = std::max(max_t, descs[j].T);
      max_cols = std::max(max_cols, descs[j].w.cols);
      tiles32 += blocks_for(descs[j].T, 32);
      tiles64 += blocks_for(descs[j].T, 64);
    }
    if (max_t == 0) continue;
    for (const MatmulDesc& d : g) MF_ASSERT(!gemm || d.mode != kDual);  // dual: matvec only
    if (gemm && is_tensor_gemm(code)) split_inputs(g);
    const size_t bytes = g.size() * sizeof(MatmulDesc);
    const auto* dev = static_cast<const MatmulDesc*>(reused ? keep(g.data(), bytes)
                                                            : stage_or_keep(g.data(), bytes));
    if (gemm) {
      // Products of few blocks (a router, one projection at a short prompt): the columns split
      // across blocks, partial sums in their own scratch.
      const int bn = gemm_tile_width(tiles32, tiles64);
      GemmSplit split;
      split.splits = gemm_splits(code, g, bn);
      if (split.splits > 1)
        split.partial = static_cast<float*>(partial_scratch_.get(
            g.size() * split.splits * size_t(max_t) * max_rows * sizeof(float), stream_));
      const bool k64 =
          std::all_of(g.begin(), g.end(), [](const MatmulDesc& d) { return d.w.cols % 64 == 0; });
      launch_gemm(code, dev, static_cast<int>(g.size()), max_rows, max_t, bn, k64, stream_, split);
    } else
      launch_matvec(code, dev, static_cast<int>(g.size()), max_rows, sum_rows, max_t, max_cols,
                    dual, stream_);
  }
}

void CudaBackend::matmul(const Tensor& X, std::span<const Projection> proj) {
  const OpTimer timer(*this, "matmul", X.rows());
  MF_ASSERT(X.rank == 2 && X.memory == Memory::Device);
  const size_t T = X.rows(), cols = X.shape[1];
  if (T == 0 || proj.empty()) return;
  descs_.clear();
  for (const Projection& p : proj) {
    MF_ASSERT(p.w && p.w->cols == cols);
    MF_ASSERT(p.y.rank == 2 && p.y.rows() == T && p.y.shape[1] == p.w->rows);
    MatmulDesc d = blank_desc();
    d.w = dev_mat(*p.w);
    d.x = X.f32();
    d.ldx = static_cast<int>(X.pitch());
    d.y = p.y.f32();
    d.ldy = static_cast<int>(p.y.pitch());
    d.bias = p.bias;
    d.T = static_cast<int>(T);
    d.mode = p.accumulate ? kAccumulate : kStore;
    descs_.push_back(d);
  }
  run_matmuls(descs_, /*reused=*/true);
}

void CudaBackend::head_matmul(const Tensor& X, const MatrixView& W, const Tensor& Y) {
  const OpTimer timer(*this, "head_matmul", X.rows());
  MF_ASSERT(X.rank == 3 && Y.rank == 3 && X.shape[0] == Y.shape[0] && X.shape[1] == Y.shape[1]);
  const size_t T = X.shape[0], heads = X.shape[1], C = X.shape[2], R = Y.shape[2];
  MF_ASSERT(W.cols == C && W.rows == heads * R);
  if (T == 0) return;
  // One product per head: W_h (rows [h R, (h + 1) R)) over that head's vectors of X.
  descs_.clear();
  for (size_t h = 0; h < heads; ++h) {
    MatmulDesc d = blank_desc();
    d.w = dev_mat(W.row_slice(h * R, R));
    d.x = X.vec(0, h);
    d.ldx = static_cast<int>(X.stride[0]);
    d.y = Y.vec(0, h);
    d.ldy = static_cast<int>(Y.stride[0]);
    d.T = static_cast<int>(T);
    d.mode = kStore;
    descs_.push_back(d);
  }
  run_matmuls(descs_, /*reused=*/true);
}

}  // namespace moeflux::cuda
