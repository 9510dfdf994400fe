// CpuBackend: memory, embedding, norms, matmul and rope. Attention, DeltaNet and the MoE ops
// are in cpu_attention.cpp, cpu_deltanet.cpp and cpu_moe.cpp.
#include "backend/cpu/cpu_backend.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cpu/matvec.hpp"
#include "backend/cpu/ops.hpp"
#include "core/argmax.hpp"
#include "core/finite.hpp"
#include "core/human_bytes.hpp"

namespace moeflux {

namespace {

// Above this size a buffer is an anonymous mapping (lazily committed pages).
constexpr size_t kMapThreshold = size_t{1} << 20;

class HostBuffer final : public BackendBuffer {
 public:
  HostBuffer(void* p, size_t bytes, bool mapped) : p_(p), bytes_(bytes), mapped_(mapped) {}
  ~HostBuffer() override {
    if (mapped_)
      munmap(p_, bytes_);
    else
      std::free(p_);
  }
  void* data() override { return p_; }
  size_t bytes() const override { return bytes_; }

 private:
  void* p_;
  size_t bytes_;
  bool mapped_;
};

// Rows of a rank-2/3 tensor as (pointer, elements) pairs: rank 2 rows, rank 3 vectors.
template <class F>
void for_each_vector(const Tensor& t, F&& f) {
  if (t.rank == 2) {
    for (size_t r = 0; r < t.shape[0]; ++r) f(r, t.row(r), t.shape[1]);
  } else {
    MF_ASSERT(t.rank == 3);
    for (size_t r = 0; r < t.shape[0]; ++r)
      for (size_t h = 0; h < t.shape[1]; ++h) f(r * t.shape[1] + h, t.vec(r, h), t.shape[2]);
  }
}

}  // namespace

std::unique_ptr<BackendBuffer> allocate_host_buffer(size_t bytes, const char* what) {
  const size_t n = std::max<size_t>(bytes, 64);
  if (n >= kMapThreshold) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED)
      fail(std::string(what) + ": cannot map " + human_bytes(n) + ": " + std::strerror(errno));
    return std::make_unique<HostBuffer>(p, n, true);
  }
  void* p = std::aligned_alloc(64, (n + 63) / 64 * 64);
  if (!p) fail(std::string(what) + ": cannot allocate " + human_bytes(n));
  return std::make_unique<HostBuffer>(p, n, false);
}

CpuBackend::CpuBackend(size_t threads) : pool_(threads) {}

std::unique_ptr<BackendBuffer> CpuBackend::allocate(size_t bytes, const char* what) {
  return allocate_host_buffer(bytes, what);
}

void CpuBackend::upload(const float* host, size_t host_pitch, const Tensor& dst) {
  MF_ASSERT(dst.rank == 2 && dst.memory == Memory::Host);
  for (size_t r = 0; r < dst.rows(); ++r)
    std::memcpy(dst.row(r), host + r * host_pitch, dst.shape[1] * sizeof(float));
}

void CpuBackend::download(const Tensor& src, float* host, size_t host_pitch) {
  MF_ASSERT(src.rank == 2 && src.memory == Memory::Host);
  for (size_t r = 0; r < src.rows(); ++r)
    std::memcpy(host + r * host_pitch, src.row(r), src.shape[1] * sizeof(float));
}

void CpuBackend::argmax_rows(const Tensor& x, std::span<int32_t> out, std::span<uint8_t> finite) {
  MF_ASSERT(x.rank == 2 && out.size() == x.rows() && finite.size() == x.rows());
  for (size_t r = 0; r < x.rows(); ++r) {
    const std::span<const float> row(x.row(r), x.shape[1]);
    out[r] = static_cast<int32_t>(argmax(row));
    finite[r] = all_finite(row) ? 1 : 0;
  }
}

void CpuBackend::top_k_rows(const Tensor& x, size_t k, std::span<TopEntry> best,
                            std::span<uint8_t> finite) {
  MF_ASSERT(x.rank == 2 && k > 0 && k <= x.shape[1] && best.size() == x.rows() * k &&
            finite.size() == x.rows());
  thread_local std::vector<TopEntry> row_best;
  for (size_t r = 0; r < x.rows(); ++r) {
    const std::span<const float> row(x.row(r), x.shape[1]);
    top_k(row, k, row_best);
    std::copy(row_best.begin(), row_best.end(), best.begin() + r * k);
    finite[r] = all_finite(row) ? 1 : 0;
  }
}

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  MF_ASSERT(src.rank == dst.rank && src.shape == dst.shape && (src.rank == 2 || src.rank == 3));
  const size_t inner = src.rank == 2 ? 1 : src.shape[1], dim = src.shape[src.rank - 1];
  for (size_t r = 0; r < src.shape[0]; ++r)
    for (size_t i = 0; i < inner; ++i) {
      const float* s = src.rank == 2 ? src.row(r) : src.vec(r, i);
      float* d = dst.rank == 2 ? dst.row(r) : dst.vec(r, i);
      std::memcpy(d, s, dim * sizeof(float));
    }
}

void CpuBackend::scatter_rows(const float* host, size_t host_pitch, std::span<const int32_t> rows,
                              const Tensor& dst) {
  MF_ASSERT(dst.rank == 2);
  for (size_t j = 0; j < rows.size(); ++j) {
    MF_ASSERT(rows[j] >= 0 && size_t(rows[j]) < dst.rows());
    std::memcpy(dst.row(size_t(rows[j])), host + j * host_pitch, dst.shape[1] * sizeof(float));
  }
}

void CpuBackend::fill(const Tensor& t, float value) {
  for_each_vector(t, [&](size_t, float* p, size_t n) { std::fill(p, p + n, value); });
}

void CpuBackend::embed(const MatrixView& E, std::span<const int> tokens, const Tensor& X) {
  MF_ASSERT(X.rank == 2 && X.rows() == tokens.size() && X.shape[1] == E.cols);
  for (size_t t = 0; t < tokens.size(); ++t) {
    MF_ASSERT(tokens[t] >= 0 && static_cast<size_t>(tokens[t]) < E.rows);
    cpu::dequantize_row(E, static_cast<size_t>(tokens[t]), X.row(t));
  }
}

void CpuBackend::rmsnorm(const Tensor& x, const float* w, const Tensor& y, float eps,
                         bool zero_centered) {
  MF_ASSERT(x.rank == y.rank && x.shape == y.shape && w != nullptr);
  const size_t vectors = x.rank == 2 ? x.shape[0] : x.shape[0] * x.shape[1];
  const size_t dim = x.shape[x.rank - 1];
  auto vec = [&](const Tensor& t, size_t v) {
    return t.rank == 2 ? t.row(v) : t.vec(v / t.shape[1], v % t.shape[1]);
  };
  pool_.parallel_for(
      vectors,
      [&](size_t b, size_t e) {
        for (size_t v = b; v < e; ++v)
          cpu::rmsnorm(vec(x, v), w, vec(y, v), dim, eps, zero_centered);
      },
      std::max<size_t>(1, 16384 / std::max<size_t>(dim, 1)));
}

void CpuBackend::matmul(const Tensor& X, std::span<const Projection> proj) {
  constexpr size_t kMaxProjections = 8;
  MF_ASSERT(X.rank == 2 && proj.size() <= kMaxProjections);
  const size_t T = X.rows(), cols = X.shape[1];
  if (T == 0 || proj.empty()) return;
  // X prepared once per distinct weight format among the projections (quantized rows for the
  // integer path), then work units: blocks of unit_rows[p] rows of each projection p (each
  // unit >= ~32K multiply-adds), numbered projection after projection from first_unit[p].
  // (Thread-local to the caller; the workers reach it through this reference.)
  thread_local std::array<cpu::PreparedX, kMaxProjections> prepared_storage;
  std::array<cpu::PreparedX, kMaxProjections>& prepared = prepared_storage;
  std::array<QuantFormat, kMaxProjections> prep_fmt{};
  std::array<size_t, kMaxProjections> prep_of{};
  size_t n_prep = 0;
  std::array<size_t, kMaxProjections + 1> first_unit{};
  std::array<size_t, kMaxProjections> unit_rows{};
  for (size_t p = 0; p < proj.size(); ++p) {
    const Projection& pr = proj[p];
    MF_ASSERT(pr.w && pr.w->cols == cols);
    MF_ASSERT(pr.y.rank == 2 && pr.y.rows() == T && pr.y.shape[1] == pr.w->rows);
    size_t i = 0;
    while (i < n_prep && !(prep_fmt[i] == pr.w->fmt)) ++i;
    if (i == n_prep) {
      prep_fmt[n_prep++] = pr.w->fmt;
      cpu::prepare_begin(pr.w->fmt, X.f32(), X.pitch(), T, cols, prepared[i]);
    }
    prep_of[p] = i;
    unit_rows[p] = cpu::matmul_task_rows(cols, T);
    first_unit[p + 1] = first_unit[p] + (pr.w->rows + unit_rows[p] - 1) / unit_rows[p];
  }
  pool_.parallel_for(
      n_prep * T,
      [&](size_t b, size_t e) {
        for (size_t u = b; u < e; ++u) cpu::prepare_rows(prepared[u / T], u % T, u % T + 1);
      },
      std::max<size_t>(1, 16384 / cols));
  pool_.parallel_for(first_unit[proj.size()], [&](size_t ub, size_t ue) {
    thread_local std::vector<float> tmp;  // accumulating projections: [T, unit rows]
    size_t p = 0;
    for (size_t u = ub; u < ue; ++u) {
      while (u >= first_unit[p + 1]) ++p;
      const Projection& pr = proj[p];
      const cpu::PreparedX& x = prepared[prep_of[p]];
      const size_t r0 = (u - first_unit[p]) * unit_rows[p];
      const size_t r1 = std::min(pr.w->rows, r0 + unit_rows[p]);
      float* Y = pr.y.f32();
      const size_t ldy = pr.y.pitch();
      if (!pr.accumulate) {
        cpu::matmul_rows_prepared(*pr.w, x, Y, ldy, r0, r1);
        if (pr.bias)
          for (size_t t = 0; t < T; ++t)
            for (size_t r = r0; r < r1; ++r) Y[t * ldy + r] += pr.bias[r];
        continue;
      }
      // Y[t, r0:r1] += (X W^T)[t, r0:r1] (+ b): computed into tmp (columns r0.. as 0..).
      const size_t n = r1 - r0;
      if (tmp.size() < T * n) tmp.resize(T * n);
      cpu::matmul_rows_prepared(pr.w->row_slice(r0, n), x, tmp.data(), n, 0, n);
      for (size_t t = 0; t < T; ++t) {
        float* y = Y + t * ldy + r0;
        const float* s = tmp.data() + t * n;
        for (size_t i = 0; i < n; ++i) y[i] += s[i] + (pr.bias ? pr.bias[r0 + i] : 0.0f);
      }
    }
  });
}

void CpuBackend::rope(const Tensor& x, const RopeTable& table, int pos0) {
  MF_ASSERT(x.rank == 3 && pos0 >= 0);
  const size_t half = static_cast<size_t>(table.rotary_dim / 2);
  MF_ASSERT(2 * half <= x.shape[2] && pos0 + x.shape[0] <= table.cos.rows());
  for (size_t t = 0; t < x.shape[0]; ++t) {
    const float* cs = table.cos.row(pos0 + t);
    const float* sn = table.sin.row(pos0 + t);
    for (size_t h = 0; h < x.shape[1]; ++h) {
      float* v = x.vec(t, h);
      for (size_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cs[i] - b * sn[i];
        v[i + half] = b * cs[i] + a * sn[i];
      }
    }
  }
}

}  // namespace moeflux
