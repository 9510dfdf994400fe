// Dispatch of the integer dot products (qdot.hpp) to the AVX2 / AVX-512 halves.
#include "backend/cpu/qdot.hpp"

#include "backend/cpu/matvec.hpp"

#include "core/error.hpp"

namespace moeflux::cpu {

bool uses_quantized_input(QuantFormat fmt, Isa isa) {
#if defined(__x86_64__)
  if (isa < Isa::Avx2) return false;
  if (fmt.kind == QuantKind::Q8_0) return fmt.group == 32;
  if (fmt.kind == QuantKind::Affine)
    return fmt.bits == 4 && (fmt.group == 32 || fmt.group == 64 || fmt.group == 128);
#endif
  (void)fmt;
  (void)isa;
  return false;
}

void QuantizedInput::reset(QuantFormat fmt, Isa isa_, size_t tokens_, size_t n_) {
  MF_ASSERT(uses_quantized_input(fmt, isa_) && format_accepts_cols(fmt, n_) && n_ % 64 == 0);
  isa = isa_;
  tokens = tokens_;
  n = n_;
  group = static_cast<size_t>(fmt.group);
  perm = fmt.kind != QuantKind::Affine ? 0 : isa == Isa::Avx512 ? 64 : 32;
  const size_t ng = n / group;
  if (xq.size() < tokens * n) xq.resize(tokens * n);
  if (d.size() < tokens * ng) {
    d.resize(tokens * ng);
    xsum.resize(tokens * ng);
  }
}

void quantize_input_rows(const float* X, size_t ldx, size_t t_begin, size_t t_end,
                         QuantizedInput& out) {
  MF_ASSERT(t_end <= out.tokens && out.group > 0);
  const size_t n = out.n, ng = n / out.group;
  for (size_t t = t_begin; t < t_end; ++t) {
#if defined(__x86_64__)
    if (out.isa == Isa::Avx512)
      detail::quantize_rows_avx512(X + t * ldx, n, out.group, out.perm, out.xq.data() + t * n,
                                   out.d.data() + t * ng, out.xsum.data() + t * ng);
    else
      detail::quantize_rows_avx2(X + t * ldx, n, out.group, out.perm, out.xq.data() + t * n,
                                 out.d.data() + t * ng, out.xsum.data() + t * ng);
#else
    (void)X;
    (void)ldx;
#endif
  }
}

void qmatmul_rows(const MatrixView& W, const QuantizedInput& x, float* Y, size_t ldy,
                  size_t row_begin, size_t row_end) {
  MF_ASSERT(uses_quantized_input(W.fmt, x.isa) && x.n == W.cols &&
            x.group == static_cast<size_t>(W.fmt.group) && row_end <= W.rows);
  MF_ASSERT(x.perm == (W.fmt.kind != QuantKind::Affine ? 0 : x.isa == Isa::Avx512 ? 64u : 32u));
  if (row_begin == row_end || x.tokens == 0) return;
#if defined(__x86_64__)
  if (x.isa == Isa::Avx512)
    detail::qmatmul_rows_avx512(W, x, Y, ldy, row_begin, row_end);
  else
    detail::qmatmul_rows_avx2(W, x, Y, ldy, row_begin, row_end);
#else
  (void)Y;
  (void)ldy;
#endif
}

}  // namespace moeflux::cpu
