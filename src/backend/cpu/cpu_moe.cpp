// CpuBackend: the grouped expert FFN and the weighted combine of the MoE block.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_backend.hpp"
#include "backend/cpu/matvec.hpp"
#include "backend/cpu/ops.hpp"
#include "backend/cpu/vec.hpp"

namespace moeflux {

// The grouped expert FFN in four parallel passes over all tasks together (one hand-off to the
// pool per pass, whatever the number of experts):
//   0. gather: a task's input rows, when it has more than one, copied together, and prepared
//      for its weights' format (cpu::PreparedX);
//   1. h = silu(gate x) * up x for blocks of intermediate rows of every task;
//   2. each task's h rows prepared for its down projection's format;
//   3. y = down h for blocks of output rows of every task, written to its slot rows.
void CpuBackend::expert_ffn(const Tensor& X, std::span<const ExpertTask> tasks,
                            const Tensor& slots) {
  MF_ASSERT(X.rank == 2 && slots.rank == 2 && slots.shape[1] == X.shape[1]);
  const size_t H = X.shape[1], n_tasks = tasks.size();
  if (n_tasks == 0) return;
  // Per task: where its gathered inputs and its h rows live, and its units in passes 1 and 2.
  thread_local struct Plan {
    std::vector<size_t> x_off, h_off, first1, rows1, first2, rows2;
    std::vector<float> xg, h;
    std::vector<cpu::PreparedX> px, ph;  // per task: its input, its h rows
  } plan;
  Plan& p = plan;
  p.x_off.resize(n_tasks + 1);
  p.h_off.resize(n_tasks + 1);
  p.first1.resize(n_tasks + 1);
  p.first2.resize(n_tasks + 1);
  p.rows1.resize(n_tasks);
  p.rows2.resize(n_tasks);
  if (p.px.size() < n_tasks) {
    p.px.resize(n_tasks);
    p.ph.resize(n_tasks);
  }
  p.x_off[0] = p.h_off[0] = p.first1[0] = p.first2[0] = 0;
  size_t total_rows = 0;
  for (size_t j = 0; j < n_tasks; ++j) {
    const ExpertTask& t = tasks[j];
    const size_t I = t.intermediate;
    MF_ASSERT(t.ready == nullptr && t.n > 0 && t.in_rows && t.out_rows);
    MF_ASSERT(t.w.gate.rows == I && t.w.up.rows == I && t.w.gate.cols == H && t.w.up.cols == H &&
              t.w.down.rows == H && t.w.down.cols == I);
    MF_ASSERT(t.w.gate.fmt == t.w.up.fmt);
    total_rows += t.n;
    p.x_off[j + 1] = p.x_off[j] + (t.n > 1 ? t.n * H : 0);
    p.h_off[j + 1] = p.h_off[j] + t.n * I;
    p.rows1[j] = cpu::matmul_task_rows(H, t.n);
    p.rows2[j] = cpu::matmul_task_rows(I, t.n);
    p.first1[j + 1] = p.first1[j] + (I + p.rows1[j] - 1) / p.rows1[j];
    p.first2[j + 1] = p.first2[j] + (H + p.rows2[j] - 1) / p.rows2[j];
  }
  // Passes 0 and 2 copy and prepare rows: inline when that is little work (decode).
  const size_t prep_grain = total_rows * H < (size_t{1} << 16) ? n_tasks : 1;
  // Passes 1 and 3: units of uneven cost (tasks with different row counts: prompts) are taken
  // dynamically; equal ones (decode: one row each) statically, so that every thread gets the
  // same units each token and its scratch, sized once, never grows (no allocation in decode).
  const bool uneven = total_rows > n_tasks;
  const size_t chunk1 = std::max<size_t>(1, p.first1[n_tasks] / (4 * threads()));
  const size_t chunk2 = std::max<size_t>(1, p.first2[n_tasks] / (4 * threads()));
  auto units = [&](size_t n, size_t chunk, FunctionRef<void(size_t, size_t)> fn) {
    if (uneven)
      pool_.parallel_for_dynamic(n, fn, chunk);
    else
      pool_.parallel_for(n, fn);
  };
  if (p.xg.size() < p.x_off[n_tasks]) p.xg.resize(p.x_off[n_tasks]);
  if (p.h.size() < p.h_off[n_tasks]) p.h.resize(p.h_off[n_tasks]);
  float* xg = p.xg.data();
  float* hbuf = p.h.data();

  // The inputs of task j: rows of X (one row: X itself), `ld` floats apart.
  auto input = [&](size_t j, size_t* ld) -> const float* {
    const ExpertTask& t = tasks[j];
    *ld = H;
    if (t.n == 1) return X.row(static_cast<size_t>(t.in_rows[0]));
    return xg + p.x_off[j];
  };
  // Maps a unit number to its task (units are numbered task after task).
  auto task_of = [&](const std::vector<size_t>& first, size_t u, size_t j) {
    while (u >= first[j + 1]) ++j;
    return j;
  };

  pool_.parallel_for(
      n_tasks,
      [&](size_t b, size_t e) {
        for (size_t j = b; j < e; ++j) {
          const ExpertTask& t = tasks[j];
          if (t.n > 1)
            for (size_t r = 0; r < t.n; ++r)
              std::memcpy(xg + p.x_off[j] + r * H, X.row(static_cast<size_t>(t.in_rows[r])),
                          H * sizeof(float));
          size_t ld;
          const float* x = input(j, &ld);
          cpu::prepare_begin(t.w.gate.fmt, x, ld, t.n, H, p.px[j]);
          cpu::prepare_rows(p.px[j], 0, t.n);
        }
      },
      prep_grain);

  units(p.first1[n_tasks], chunk1, [&](size_t ub, size_t ue) {
    thread_local std::vector<float> g, u;
    size_t j = 0;
    for (size_t unit = ub; unit < ue; ++unit) {
      j = task_of(p.first1, unit, j);
      const ExpertTask& t = tasks[j];
      const size_t I = t.intermediate;
      const size_t r0 = (unit - p.first1[j]) * p.rows1[j];
      const size_t nr = std::min(I, r0 + p.rows1[j]) - r0;
      if (g.size() < t.n * nr) {
        g.resize(t.n * nr);
        u.resize(t.n * nr);
      }
      cpu::matmul_rows_prepared(t.w.gate.row_slice(r0, nr), p.px[j], g.data(), nr, 0, nr);
      cpu::matmul_rows_prepared(t.w.up.row_slice(r0, nr), p.px[j], u.data(), nr, 0, nr);
      for (size_t r = 0; r < t.n; ++r) {
        float* h = hbuf + p.h_off[j] + r * I + r0;
        for (size_t i = 0; i < nr; ++i) h[i] = cpu::silu(g[r * nr + i]) * u[r * nr + i];
      }
    }
  });

  pool_.parallel_for(
      n_tasks,
      [&](size_t b, size_t e) {
        for (size_t j = b; j < e; ++j) {
          const ExpertTask& t = tasks[j];
          cpu::prepare_begin(t.w.down.fmt, hbuf + p.h_off[j], t.intermediate, t.n, t.intermediate,
                             p.ph[j]);
          cpu::prepare_rows(p.ph[j], 0, t.n);
        }
      },
      prep_grain);

  units(p.first2[n_tasks], chunk2, [&](size_t ub, size_t ue) {
    thread_local std::vector<float> y;
    size_t j = 0;
    for (size_t unit = ub; unit < ue; ++unit) {
      j = task_of(p.first2, unit, j);
      const ExpertTask& t = tasks[j];
      const size_t r0 = (unit - p.first2[j]) * p.rows2[j];
      const size_t nr = std::min(H, r0 + p.rows2[j]) - r0;
      const MatrixView down = t.w.down.row_slice(r0, nr);
      if (t.n == 1) {
        cpu::matmul_rows_prepared(down, p.ph[j], slots.row(static_cast<size_t>(t.out_rows[0])) + r0,
                                  nr, 0, nr);
        continue;
      }
      if (y.size() < t.n * nr) y.resize(t.n * nr);
      cpu::matmul_rows_prepared(down, p.ph[j], y.data(), nr, 0, nr);
      for (size_t r = 0; r < t.n; ++r)
        std::memcpy(slots.row(static_cast<size_t>(t.out_rows[r])) + r0, y.data() + r * nr,
                    nr * sizeof(float));
    }
  });
}

void CpuBackend::expert_ffn_indexed(const Tensor& X, const int32_t* ids, size_t k,
                                    const IndexedExperts& ex, const Tensor& slots, size_t S) {
  // Host memory: the ids are readable here. Each (row, rank) is one single-row task.
  const size_t T = X.rows();
  thread_local std::vector<ExpertTask> tasks;
  thread_local std::vector<int32_t> rows;
  tasks.clear();
  rows.resize(2 * T * k);
  for (size_t t = 0; t < T; ++t)
    for (size_t i = 0; i < k; ++i) {
      const int32_t e = ids[t * k + i];
      MF_ASSERT(e >= 0 && static_cast<size_t>(e) < ex.experts);
      const uint8_t* rec = ex.records[e];
      int32_t* r = rows.data() + 2 * (t * k + i);
      r[0] = static_cast<int32_t>(t);
      r[1] = static_cast<int32_t>(t * S + i);
      ExpertTask task;
      task.w = {ex.gate.at(rec), ex.up.at(rec), ex.down.at(rec)};
      task.intermediate = ex.gate.rows;
      task.in_rows = r;
      task.out_rows = r + 1;
      task.n = 1;
      tasks.push_back(task);
    }
  expert_ffn(X, tasks, slots);
}

void CpuBackend::combine(const CombineArgs& a) {
  const size_t S = a.slots_per_token, K = a.k;
  MF_ASSERT(a.out.rank == 2 && a.slots.rank == 2 && S >= K && S > 0);
  const size_t T = a.out.rows(), H = a.out.shape[1];
  MF_ASSERT(a.slots.rows() >= T * S && a.slots.shape[1] == H && (K == 0 || a.routed));
  MF_ASSERT(a.gate.empty() || (a.gate.rank == 2 && a.gate.rows() == T));
  pool_.parallel_for(
      T,
      [&](size_t b, size_t e) {
        for (size_t t = b; t < e; ++t) {
          float* o = a.out.row(t);
          for (size_t s = 0; s < S; ++s) {
            const float w = s < K ? a.routed[t * K + s]
                                  : (a.gate.empty() ? 1.0f : cpu::sigmoid(a.gate.row(t)[0]));
            cpu::axpy(w, a.slots.row(t * S + s), o, H);
          }
        }
      },
      std::max<size_t>(1, 16384 / (S * H)));
}

}  // namespace moeflux
