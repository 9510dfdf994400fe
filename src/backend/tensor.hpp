// Tensors of the compute seam: activations and per-sequence state in a backend's memory.
//
// A Tensor is a non-owning, strided view of up to 3 dimensions, outermost first; the last
// dimension is contiguous (stride 1). Element (i, j, k) of a rank-3 tensor sits at
//   data + (i * stride[0] + j * stride[1] + k) * element_size(dtype).
// A rank-2 tensor [rows, cols] has stride[0] = the row pitch (>= cols: views of a column range
// of a wider buffer keep the wide pitch). `memory` says which processor can dereference `data`:
// host pointers for the CPU backend, device pointers for a GPU backend. Ops assert that their
// tensors live in the backend's memory.
//
// Weights are not Tensors: a stored matrix is a MatrixView (core/quant_format.hpp: format,
// section pointers), norm vectors are `const float*`, both in the backend's memory as well.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "core/error.hpp"

namespace moeflux {

enum class DType : uint8_t { F32, I32 };
inline size_t element_size(DType) { return 4; }

enum class Memory : uint8_t { Host, Device };

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Memory memory = Memory::Host;
  int rank = 0;
  std::array<size_t, 3> shape{};   // outermost first
  std::array<size_t, 3> stride{};  // in elements; stride[rank - 1] == 1

  static Tensor matrix(void* data, size_t rows, size_t cols, size_t pitch, Memory m,
                       DType t = DType::F32) {
    Tensor x;
    x.data = data;
    x.dtype = t;
    x.memory = m;
    x.rank = 2;
    x.shape = {rows, cols, 0};
    x.stride = {pitch, 1, 0};
    return x;
  }

  size_t rows() const { return shape[0]; }
  // Elements of one row (rank 2: cols; rank 3: heads x dim, which must then be dense).
  size_t cols() const { return rank == 2 ? shape[1] : shape[1] * shape[2]; }
  size_t pitch() const { return stride[0]; }
  bool empty() const { return rank == 0 || shape[0] == 0; }

  float* f32() const {
    MF_ASSERT(dtype == DType::F32);
    return static_cast<float*>(data);
  }
  int32_t* i32() const {
    MF_ASSERT(dtype == DType::I32);
    return static_cast<int32_t*>(data);
  }
  float* row(size_t r) const { return f32() + r * stride[0]; }

  // Rows [begin, begin + n).
  Tensor rows_view(size_t begin, size_t n) const {
    MF_ASSERT(begin + n <= shape[0]);
    Tensor v = *this;
    v.data = static_cast<char*>(data) + begin * stride[0] * element_size(dtype);
    v.shape[0] = n;
    return v;
  }
  // Columns [begin, begin + n) of a rank-2 tensor (same pitch).
  Tensor cols_view(size_t begin, size_t n) const {
    MF_ASSERT(rank == 2 && begin + n <= shape[1]);
    Tensor v = *this;
    v.data = static_cast<char*>(data) + begin * element_size(dtype);
    v.shape[1] = n;
    return v;
  }
  // A rank-2 tensor whose rows hold `heads` vectors of `dim` elements, `head_pitch` apart
  // (dim for packed heads; 2 * dim for qwen3_5's per-head [query | gate]), as [rows, heads, dim].
  Tensor heads(size_t heads, size_t dim, size_t head_pitch) const {
    MF_ASSERT(rank == 2 && heads > 0 && (heads - 1) * head_pitch + dim <= shape[1]);
    Tensor v = *this;
    v.rank = 3;
    v.shape = {shape[0], heads, dim};
    v.stride = {stride[0], head_pitch, 1};
    return v;
  }
  // The vector (i, j) of a rank-3 tensor.
  float* vec(size_t i, size_t j) const { return f32() + i * stride[0] + j * stride[1]; }
};

}  // namespace moeflux
