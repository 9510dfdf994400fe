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

struct MatmulDesc {
  DevMat w, w2;
  const float* x = nullptr;
  const int32_t* x_rows = nullptr;
  float* y = nullptr;
  const int32_t* y_rows = nullptr;
  const float* bias = nullptr;
  int ldx = 0, ldy = 0, T = 0, mode = kStore;
};

// A descriptor with every byte zero, padding included (descriptors are compared and hashed
// as bytes: CudaBackend::persistent_descs).
__host__ __device__ inline MatmulDesc blank_desc() {
  MatmulDesc d;
  std::memset(static_cast<void*>(&d), 0, sizeof d);
  return d;
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

// Elements [c0, c0 + Chunk<CODE>::n) of row r, with one 16-byte load of codes (c0 a multiple
// of the chunk; the row 16-byte aligned). kGeneric: the one element c0.
template <int CODE>
__device__ __forceinline__ void load_chunk(const DevMat& m, int r, int c0, float* out) {
  if constexpr (CODE == kGeneric) {
    out[0] = decode_elem(m, r, c0);
  } else {
    const uint8_t* row = m.data + static_cast<size_t>(r) * m.row_bytes;
    if constexpr (CODE == kF32) {
      const float4 v = *reinterpret_cast<const float4*>(row + 4 * static_cast<size_t>(c0));
      out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
    } else if constexpr (CODE == kF16 || CODE == kBF16) {
      const uint4 v = *reinterpret_cast<const uint4*>(row + 2 * static_cast<size_t>(c0));
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if constexpr (CODE == kBF16) {
          out[2 * i] = bf16_bits(w[i] & 0xffffu);
          out[2 * i + 1] = bf16_bits(w[i] >> 16);
        } else {
          out[2 * i] = f16_bits(static_cast<uint16_t>(w[i] & 0xffffu));
          out[2 * i + 1] = f16_bits(static_cast<uint16_t>(w[i] >> 16));
        }
      }
    } else if constexpr (CODE == kQ8) {
      const uint4 v = *reinterpret_cast<const uint4*>(row + static_cast<size_t>(c0));
      const float s =
          f16_bits(load_u16(m.scales + 2 * (static_cast<size_t>(r) * (m.cols / 32) + c0 / 32)));
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < 16; ++i)
        out[i] = static_cast<float>(static_cast<int8_t>((w[i / 4] >> (8 * (i % 4))) & 0xffu)) * s;
    } else {  // kA4, kA8: one group holds the whole chunk (groups are >= 32 elements)
      constexpr int bits = CODE == kA4 ? 4 : 8, per_word = 32 / bits;
      constexpr uint32_t mask = (1u << bits) - 1u;
      const uint4 v = *reinterpret_cast<const uint4*>(row + static_cast<size_t>(c0) / per_word * 4);
      const size_t g = static_cast<size_t>(r) * (m.cols / m.group) + c0 / m.group;
      const float s = bf16_bits(load_u16(m.scales + 2 * g));
      const float b = bf16_bits(load_u16(m.biases + 2 * g));
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < 4 * per_word; ++i)
        out[i] = static_cast<float>((w[i / per_word] >> (bits * (i % per_word))) & mask) * s + b;
    }
  }
}

}  // namespace moeflux::cuda
