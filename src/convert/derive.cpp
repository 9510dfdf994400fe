#include "convert/derive.hpp"

#include <cstring>

#include "backend/cpu/matvec.hpp"
#include "core/error.hpp"

namespace moeflux {

namespace {

// Row r of the result is row perm[r] of src, section by section.
DerivedMatrix permute_rows(const MatrixView& src, const std::vector<size_t>& perm) {
  DerivedMatrix d;
  const MatrixLayout l = matrix_layout(src.fmt, src.rows, src.cols);
  d.bytes.resize(l.total_bytes);
  const size_t db = row_data_bytes(src.fmt, src.cols), sb = row_scale_bytes(src.fmt, src.cols),
               bb = row_bias_bytes(src.fmt, src.cols);
  for (size_t r = 0; r < src.rows; ++r) {
    const size_t from = perm[r];
    std::memcpy(d.bytes.data() + l.data_offset + r * db, src.data + from * db, db);
    if (sb) std::memcpy(d.bytes.data() + l.scales_offset + r * sb, src.scales + from * sb, sb);
    if (bb) std::memcpy(d.bytes.data() + l.biases_offset + r * bb, src.biases + from * bb, bb);
  }
  d.view = MatrixView::from_record(src.fmt, src.rows, src.cols, d.bytes.data());
  return d;
}

DerivedMatrix f32_matrix(size_t rows, size_t cols) {
  DerivedMatrix d;
  d.bytes.resize(rows * cols * sizeof(float));
  d.view = MatrixView::from_record(QuantFormat::f32(), rows, cols, d.bytes.data());
  return d;
}

}  // namespace

std::vector<int64_t> derive_source_shape(const TensorSpec& spec, const ModelConfig& c) {
  if (spec.derive == Derive::DeinterleaveRope) return spec.shape;
  return {int64_t{c.num_heads} * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank};
}

DerivedMatrix derive_matrix(const TensorSpec& spec, const MatrixView& src, const ModelConfig& c) {
  const size_t nh = c.num_heads, nope = c.qk_nope_head_dim, vd = c.v_head_dim;
  const size_t L = c.kv_lora_rank, R = c.qk_rope_head_dim;
  switch (spec.derive) {
    case Derive::DeinterleaveRope: {
      // Within each block, the rope range [block - R, block): even rows first, then odd rows.
      const size_t block = static_cast<size_t>(spec.block);
      MF_ASSERT(block >= R && src.rows % block == 0);
      std::vector<size_t> perm(src.rows);
      for (size_t r = 0; r < src.rows; ++r) {
        const size_t b = r / block * block, i = r % block, rope0 = block - R;
        perm[r] =
            i < rope0
                ? r
                : b + rope0 + (i - rope0 < R / 2 ? 2 * (i - rope0) : 2 * (i - rope0 - R / 2) + 1);
      }
      return permute_rows(src, perm);
    }
    case Derive::KvbKeysAbsorbed: {
      // k_absorb[h L + j, i] = kv_b[h (nope + v) + i, j]
      MF_ASSERT(src.rows == nh * (nope + vd) && src.cols == L);
      DerivedMatrix d = f32_matrix(nh * L, nope);
      float* out = reinterpret_cast<float*>(d.bytes.data());
      std::vector<float> row(L);
      for (size_t h = 0; h < nh; ++h)
        for (size_t i = 0; i < nope; ++i) {
          cpu::dequantize_row(src, h * (nope + vd) + i, row.data());
          for (size_t j = 0; j < L; ++j) out[(h * L + j) * nope + i] = row[j];
        }
      return d;
    }
    case Derive::KvbValues: {
      // v_up[h v + d, :] = kv_b[h (nope + v) + nope + d, :]
      MF_ASSERT(src.rows == nh * (nope + vd) && src.cols == L);
      DerivedMatrix d = f32_matrix(nh * vd, L);
      float* out = reinterpret_cast<float*>(d.bytes.data());
      for (size_t h = 0; h < nh; ++h)
        for (size_t i = 0; i < vd; ++i)
          cpu::dequantize_row(src, h * (nope + vd) + nope + i, out + (h * vd + i) * L);
      return d;
    }
    case Derive::None:
      break;
  }
  MF_ASSERT(false && "derive_matrix of a plain tensor");
  return {};
}

}  // namespace moeflux
