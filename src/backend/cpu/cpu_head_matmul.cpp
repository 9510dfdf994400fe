// CpuBackend::head_matmul: a stacked per-head weight applied head by head,
//   Y[t,h] = W_h X[t,h],  W_h = rows [h R, (h + 1) R) of W [heads * R, C],
// with each head's input prepared once (cpu::PreparedX) and the work split across the pool in
// one hand-off: units are (head, block of rows of W_h).
#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_backend.hpp"
#include "backend/cpu/matvec.hpp"

namespace moeflux {

void CpuBackend::head_matmul(const Tensor& X, const MatrixView& W, const Tensor& Y) {
  MF_ASSERT(X.rank == 3 && Y.rank == 3 && X.shape[0] == Y.shape[0] && X.shape[1] == Y.shape[1]);
  const size_t T = X.shape[0], heads = X.shape[1], C = X.shape[2], R = Y.shape[2];
  MF_ASSERT(W.cols == C && W.rows == heads * R);
  if (T == 0) return;
  thread_local std::vector<cpu::PreparedX> prepared_storage;
  std::vector<cpu::PreparedX>& prepared = prepared_storage;
  if (prepared.size() < heads) prepared.resize(heads);
  for (size_t h = 0; h < heads; ++h)
    cpu::prepare_begin(W.fmt, X.vec(0, h), X.pitch(), T, C, prepared[h]);
  pool_.parallel_for(
      heads * T,
      [&](size_t b, size_t e) {
        for (size_t u = b; u < e; ++u) cpu::prepare_rows(prepared[u / T], u % T, u % T + 1);
      },
      std::max<size_t>(1, 16384 / std::max<size_t>(C, 1)));
  const size_t unit_rows = std::min(R, cpu::matmul_task_rows(C, T));
  const size_t per_head = (R + unit_rows - 1) / unit_rows;
  pool_.parallel_for(heads * per_head, [&](size_t ub, size_t ue) {
    for (size_t u = ub; u < ue; ++u) {
      const size_t h = u / per_head, r0 = (u % per_head) * unit_rows;
      const size_t r1 = std::min(R, r0 + unit_rows);
      cpu::matmul_rows_prepared(W.row_slice(h * R, R), prepared[h], Y.vec(0, h), Y.pitch(), r0, r1);
    }
  });
}

}  // namespace moeflux
