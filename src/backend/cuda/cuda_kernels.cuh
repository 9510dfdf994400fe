// Device-side building blocks of the CUDA backend: stored-matrix descriptors and their decoders
// (the formats of core/quant_format.hpp), warp reductions, activation functions.
//
// A DevMat is a MatrixView with the sizes the kernels need precomputed. Decoding follows the
// layout exactly as the CPU's dequantize_row does:
//   F32/F16/BF16 : value = the element
//   Q8_0         : value = int8 code * f16 scale of its group of 32
//   Affine       : value = code * bf16 scale + bf16 bias of its group; codes of `bits` bits
//                  packed little-endian in uint32 words.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace moeflux::cuda {

// Format codes (compile-time template arguments of the kernels). kGeneric decodes any format
// element by element with a runtime switch (odd shapes, alignment the vector path lacks).
enum FormatCode : int { kF32 = 0, kF16 = 1, kBF16 = 2, kQ8 = 3, kA4 = 4, kA8 = 5, kGeneric = 6 };

struct DevMat {
  const uint8_t* data = nullptr;
  const uint8_t* scales = nullptr;
  const uint8_t* biases = nullptr;
  int rows = 0, cols = 0;
  int code = kF32;       // FormatCode of the stored format (never kGeneric)
  int group = 0;         // elements per scale group (Q8_0, Affine)
  size_t row_bytes = 0;  // data bytes per row
};

// One product of a batched matmul launch: Y[y_row(t)] (op)= W X[x_row(t)] (+ bias), t < T,
// where x_row(t) = x_rows ? x_rows[t] : t (likewise y). mode: kStore, kAccumulate, kSwiglu
// (Y = silu(Y) * result: the up projection after the gate was stored), kDual (w2 set: Y =
// silu(W X) * (W2 X), gate and up of an expert in one pass).
enum MatmulMode : int { kStore = 0, kAccumulate = 1, kSwiglu = 2, kDual = 3 };

// The tensor-core GEMM reads X as its bf16 terms, split once per call (split_x_kernel): row r
// of X (K = w.cols columns) at xs + r K words, [K / 2 words of X_hi pairs | K / 2 of X_lo
// pairs], and Σ x per 32-column k-tile at xsum + r K / 32. x_count: rows of X that x_rows may
// name (the rows split; without x_rows, T).
struct MatmulDesc {
  DevMat w, w2;
  const float* x = nullptr;
  const int32_t* x_rows = nullptr;
  float* y = nullptr;
  const int32_t* y_rows = nullptr;
  const float* bias = nullptr;
  const uint32_t* xs = nullptr;
  const float* xsum = nullptr;
  int ldx = 0, ldy = 0, T = 0, mode = kStore, x_count = 0;
  int pad_ = 0;  // explicit, so that no byte is padding (descriptors are hashed as bytes)
};
static_assert(std::has_unique_object_representations_v<MatmulDesc>,
              "MatmulDesc must have no padding: CudaBackend::keep compares descriptors as bytes");

// One X of the tensor-core GEMM split into bf16 terms (split_x_kernel): rows x K of x (pitch
// ldx) into xs (row stride K words: high pairs then low pairs) and xsum (row stride K / 32).
struct SplitJob {
  const float* x = nullptr;
  int ldx = 0, rows = 0, K = 0;
  uint32_t* xs = nullptr;
  float* xsum = nullptr;
};

// expert_ffn_indexed's products, built from the router's ids by the matrix-vector launch itself
// (indexed_product), not read from descriptors a kernel before it wrote: product p = t k + i
// (row t, rank i, expert e = ids[p], its record at records[e]):
//   gate/up pass (down_pass 0): h[p] = silu(gate_e X[t]) * (up_e X[t])   (dual, one row)
//   down pass (down_pass 1):    slots[t S + i] = down_e h[p]
// gate, up, down describe a record at address 0 (their pointers are byte offsets). ids null: the
// launch reads its descriptors.
struct IndexedProducts {
  const int32_t* ids = nullptr;
  const uint8_t* const* records = nullptr;
  DevMat gate, up, down;
  const float* X = nullptr;
  float* h = nullptr;
  float* slots = nullptr;
  int ldx = 0, I = 0, lds = 0, S = 0, k = 0, down_pass = 0;
};

// A descriptor with every byte zero, padding included (descriptors are compared and hashed
// as bytes: CudaBackend::keep).
__host__ __device__ inline MatmulDesc blank_desc() {
  MatmulDesc d;
  std::memset(static_cast<void*>(&d), 0, sizeof d);
  return d;
}

// m, a matrix of a record at address 0, at the record `rec`.
__device__ __forceinline__ DevMat at_record(DevMat m, const uint8_t* rec) {
  m.data = rec + reinterpret_cast<uintptr_t>(m.data);
  if (m.scales) m.scales = rec + reinterpret_cast<uintptr_t>(m.scales);
  if (m.biases) m.biases = rec + reinterpret_cast<uintptr_t>(m.biases);
  return m;
}

// Product p of an IndexedProducts pass (read the router's ids: only after await_inputs()).
__device__ __forceinline__ MatmulDesc indexed_product(const IndexedProducts& ix, int p) {
  const int t = p / ix.k, i = p % ix.k;
  const uint8_t* rec = ix.records[ix.ids[p]];
  MatmulDesc d = blank_desc();
  float* h = ix.h + static_cast<size_t>(p) * ix.I;
  d.T = 1;
  if (!ix.down_pass) {
    d.w = at_record(ix.gate, rec);
    d.w2 = at_record(ix.up, rec);
    d.x = ix.X + static_cast<size_t>(t) * ix.ldx;
    d.ldx = ix.ldx;
    d.y = h;
    d.ldy = ix.I;
    d.mode = kDual;
  } else {
    d.w = at_record(ix.down, rec);
    d.x = h;
    d.ldx = ix.I;
    d.y = ix.slots + (static_cast<size_t>(t) * ix.S + i) * ix.lds;
    d.ldy = ix.lds;
    d.mode = kStore;
  }
  return d;
}

// Programmatic dependent launch (sm_90 and later; nothing on older GPUs). In a recorded decode
// step the edges between consecutive kernels are programmatic (CudaBackend::end_recording), so
// a kernel may start while the one before it still runs. Every kernel therefore calls
// await_inputs() before it reads anything an earlier kernel wrote or writes anything an earlier
// kernel reads, and before any of its blocks returns: only what never changes (weights, kept
// descriptors) may be read before it. Because every kernel waits before it can finish, waiting
// for the kernel just before is waiting for all earlier ones. Once its inputs are there, a
// kernel lets the next one start its own preamble. Outside such edges both are no-ops.
__device__ __forceinline__ void await_inputs() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float bf16_bits(uint32_t u16) {
  return __uint_as_float(u16 << 16);
}
__device__ __forceinline__ float f16_bits(uint16_t u) {
  return __half2float(__ushort_as_half(u));
}
__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) {
  return *reinterpret_cast<const uint16_t*>(p);
}

__device__ __forceinline__ float sigmoidf_(float x) {
  return 1.0f / (1.0f + expf(-x));
}
__device__ __forceinline__ float siluf_(float x) {
  return x / (1.0f + expf(-x));
}
__device__ __forceinline__ float softplusf_(float x) {
  return x > 20.0f ? x : log1pf(expf(x));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Element (r, c) of W, any format (runtime switch).
__device__ __forceinline__ float decode_elem(const DevMat& m, int r, int c) {
  const uint8_t* row = m.data + static_cast<size_t>(r) * m.row_bytes;
  switch (m.code) {
    case kF32:
      return reinterpret_cast<const float*>(row)[c];
    case kF16:
      return f16_bits(reinterpret_cast<const uint16_t*>(row)[c]);
    case kBF16:
      return bf16_bits(reinterpret_cast<const uint16_t*>(row)[c]);
    case kQ8: {
      const size_t g = static_cast<size_t>(r) * (m.cols / 32) + c / 32;
      return static_cast<float>(static_cast<int8_t>(row[c])) * f16_bits(load_u16(m.scales + 2 * g));
    }
    default: {  // Affine
      const int bits = m.code == kA4 ? 4 : 8, per_word = 32 / bits;
      const uint32_t word = reinterpret_cast<const uint32_t*>(row)[c / per_word];
      const uint32_t q = (word >> (bits * (c % per_word))) & ((1u << bits) - 1u);
      const size_t g = static_cast<size_t>(r) * (m.cols / m.group) + c / m.group;
      return static_cast<float>(q) * bf16_bits(load_u16(m.scales + 2 * g)) +
             bf16_bits(load_u16(m.biases + 2 * g));
    }
  }
}

// Elements per 16-byte load of each format (the vector path's chunk).
template <int CODE>
struct Chunk {
  static constexpr int n = CODE == kF32                    ? 4
                           : CODE == kF16 || CODE == kBF16 ? 8
                           : CODE == kQ8 || CODE == kA8    ? 16
                           : CODE == kA4                   ? 32
                                                           : 1;
};

// The codes of elements [c0, c0 + Chunk<CODE>::n) of row r, as loaded (one 16-byte load, plus
// the group's scale and bias), decoded element by element by chunk_code: a kernel can have
// several rows' loads in flight before it decodes any (c0 a multiple of the chunk; the row
// 16-byte aligned). kGeneric: the one element c0, decoded at once.
struct RawChunk {
  uint4 v;
  float s, b;
};

template <int CODE>
__device__ __forceinline__ RawChunk load_raw(const DevMat& m, int r, int c0) {
  RawChunk c{};
  if constexpr (CODE == kGeneric) {
    c.s = decode_elem(m, r, c0);
  } else {
    const uint8_t* row = m.data + static_cast<size_t>(r) * m.row_bytes;
    constexpr int bytes_per_elem4 = CODE == kF32 ? 16 : CODE == kF16 || CODE == kBF16 ? 8 : 0;
    if constexpr (bytes_per_elem4 > 0) {
      c.v = *reinterpret_cast<const uint4*>(row + static_cast<size_t>(c0) * bytes_per_elem4 / 4);
    } else if constexpr (CODE == kQ8) {
      c.v = *reinterpret_cast<const uint4*>(row + static_cast<size_t>(c0));
      c.s = f16_bits(load_u16(m.scales + 2 * (static_cast<size_t>(r) * (m.cols / 32) + c0 / 32)));
    } else {  // kA4, kA8: one group holds the whole chunk (groups are >= 32 elements)
      constexpr int per_word = CODE == kA4 ? 8 : 4;
      c.v = *reinterpret_cast<const uint4*>(row + static_cast<size_t>(c0) / per_word * 4);
      const size_t g = static_cast<size_t>(r) * (m.cols / m.group) + c0 / m.group;
      c.s = bf16_bits(load_u16(m.scales + 2 * g));
      c.b = bf16_bits(load_u16(m.biases + 2 * g));
    }
  }
  return c;
}

// Products with a loaded chunk: Σ_i W_i x_i = chunk_scale(c, Σ_i code_i x_i, Σ_i x_i), where
// code_i = chunk_code(c, i) (i < Chunk<CODE>::n; a constant once unrolled). For the float
// formats the code is the element and chunk_scale returns the dot product; for Q8_0 (W = q s)
// it is s · Σ q x; for the affine formats (W = q s + b, the chunk within one group)
// s · Σ q x + b · Σ x, the decomposition the CPU kernels use too.
//
// Integer codes become floats without a conversion instruction (a quarter-rate operation on
// the GPU, and decode would be bound by it): the code's bits placed under the exponent of 2^23
// make the float 2^23 + q exactly, and subtracting 2^23 leaves q exactly. Signed Q8_0 codes are
// offset by 128 first (q ^ 0x80 = q + 128 as an unsigned byte).
template <int CODE>
__device__ __forceinline__ float chunk_code(const RawChunk& c, int i) {
  const uint32_t w[4] = {c.v.x, c.v.y, c.v.z, c.v.w};
  if constexpr (CODE == kGeneric) {
    return c.s;
  } else if constexpr (CODE == kF32) {
    return __uint_as_float(w[i]);
  } else if constexpr (CODE == kBF16) {
    return __uint_as_float(i % 2 ? w[i / 2] & 0xffff0000u : w[i / 2] << 16);
  } else if constexpr (CODE == kF16) {
    return f16_bits(static_cast<uint16_t>(i % 2 ? w[i / 2] >> 16 : w[i / 2] & 0xffffu));
  } else if constexpr (CODE == kQ8) {
    const uint32_t q = ((w[i / 4] >> (8 * (i % 4))) & 0xffu) ^ 0x80u;
    return __uint_as_float(0x4b000000u | q) - 8388736.0f;  // 2^23 + 128
  } else {
    constexpr int bits = CODE == kA4 ? 4 : 8, per_word = 32 / bits;
    constexpr uint32_t mask = (1u << bits) - 1u;
    const uint32_t q = (w[i / per_word] >> (bits * (i % per_word))) & mask;
    return __uint_as_float(0x4b000000u | q) - 8388608.0f;  // 2^23
  }
}

// Whether chunk_scale needs Σ x (the affine formats).
template <int CODE>
inline constexpr bool kNeedsXSum = CODE == kA4 || CODE == kA8;

template <int CODE>
__device__ __forceinline__ float chunk_scale(const RawChunk& c, float dot, float sx) {
  if constexpr (kNeedsXSum<CODE>)
    return fmaf(c.s, dot, c.b * sx);
  else if constexpr (CODE == kQ8)
    return c.s * dot;
  else
    return dot;
}

}  // namespace moeflux::cuda
