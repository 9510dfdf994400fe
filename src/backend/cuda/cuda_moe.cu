// CudaBackend::expert_ffn: every task's SwiGLU FFN over its rows of X, into its slot rows.
//
// Three batched product launches (per weight format) for all tasks together, after every task's
// weights have landed (ExpertTask::ready, waited for on the device):
//   1. h = silu(gate x) * up x: tasks of few rows in one dual matrix-vector pass (gate and up
//      rows streamed side by side); tasks of many rows as a GEMM storing gate x, then
//   1b. a GEMM of up whose epilogue makes h = silu(stored) * up x;
//   2. slots[out_rows] = down h.
// Row lists are staged to the device once per call; h lives in the backend's scratch.
#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_check.hpp"

namespace moeflux::cuda {

namespace {

// Descriptors of expert_ffn_indexed, built on the device from the router's ids: for pair
// p = t * k + i (row t, rank i, expert e = ids[p]):
//   gate_up[p]: h[p] = silu(gate_e X[t]) * (up_e X[t])     (dual matrix-vector, one row)
//   down[p]:    slots[t * S + i] = down_e h[p]
// `gate`, `up`, `down` describe a record at address 0 (pointers = byte offsets).
__device__ DevMat at_record(DevMat m, const uint8_t* rec) {
  m.data = rec + reinterpret_cast<uintptr_t>(m.data);
  if (m.scales) m.scales = rec + reinterpret_cast<uintptr_t>(m.scales);
  if (m.biases) m.biases = rec + reinterpret_cast<uintptr_t>(m.biases);
  return m;
}

__global__ void indexed_descs_kernel(const int32_t* ids, int pairs, int k,
                                     const uint8_t* const* records, DevMat gate, DevMat up,
                                     DevMat down, const float* X, int ldx, float* h, int I,
                                     float* slots, int lds, int S, MatmulDesc* gate_up,
                                     MatmulDesc* down_out) {
  await_inputs();
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  const int t = p / k, i = p % k;
  const uint8_t* rec = records[ids[p]];
  MatmulDesc d = blank_desc();
  d.w = at_record(gate, rec);
  d.w2 = at_record(up, rec);
  d.x = X + static_cast<size_t>(t) * ldx;
  d.ldx = ldx;
  d.y = h + static_cast<size_t>(p) * I;
  d.ldy = I;
  d.T = 1;
  d.mode = kDual;
  gate_up[p] = d;
  MatmulDesc o = blank_desc();
  o.w = at_record(down, rec);
  o.x = d.y;
  o.ldx = I;
  o.y = slots + (static_cast<size_t>(t) * S + i) * lds;
  o.ldy = lds;
  o.T = 1;
  o.mode = kStore;
  down_out[p] = o;
}

// A DevMat of a record matrix at address 0: pointers hold byte offsets (scales and biases
// never start a record, so null still means absent).
DevMat relative_mat(const RecordMatrix& m) {
  MatrixView rel;
  rel.fmt = m.fmt;
  rel.rows = m.rows;
  rel.cols = m.cols;
  const MatrixLayout l = matrix_layout(m.fmt, m.rows, m.cols);
  auto off = [](size_t o) { return reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(o)); };
  rel.data = off(m.offset + l.data_offset);
  rel.scales = l.scales_bytes ? off(m.offset + l.scales_offset) : nullptr;
  rel.biases = l.biases_bytes ? off(m.offset + l.biases_offset) : nullptr;
  return dev_mat(rel);
}

}  // namespace

void CudaBackend::expert_ffn(const Tensor& X, std::span<const ExpertTask> tasks,
                             const Tensor& slots) {
  const OpTimer timer(*this, "expert_ffn", X.rows());
  MF_ASSERT(X.rank == 2 && slots.rank == 2 && slots.shape[1] == X.shape[1]);
  MF_ASSERT(X.memory == Memory::Device && slots.memory == Memory::Device);
  const size_t H = X.shape[1];
  if (tasks.empty()) return;
  // Row lists of every task, [in rows of task 0 | out rows of task 0 | in rows of task 1 ...].
  thread_local std::vector<int32_t> rows;
  rows.clear();
  size_t h_floats = 0;
  for (const ExpertTask& t : tasks) {
    MF_ASSERT(t.n > 0 && t.in_rows && t.out_rows);
    // A record still being copied into the GPU tier: the launches wait for it on the device
    // (the copy stream's event; the host does not wait).
    if (t.ready)
      MF_CUDA(
          cudaStreamWaitEvent(stream_, static_cast<cudaEvent_t>(const_cast<void*>(t.ready)), 0));
    MF_ASSERT(t.w.gate.rows == t.intermediate && t.w.up.rows == t.intermediate &&
              t.w.gate.cols == H && t.w.up.cols == H && t.w.down.rows == H &&
              t.w.down.cols == t.intermediate);
    MF_ASSERT(t.w.gate.fmt == t.w.up.fmt);
    rows.insert(rows.end(), t.in_rows, t.in_rows + t.n);
    rows.insert(rows.end(), t.out_rows, t.out_rows + t.n);
    h_floats += t.n * t.intermediate;
  }
  const auto* dev_rows =
      static_cast<const int32_t*>(stage_or_keep(rows.data(), rows.size() * sizeof(int32_t)));
  float* h = scratch(h_floats * sizeof(float));

  thread_local std::vector<MatmulDesc> up_pass, gate_pass, down_pass;
  gate_pass.clear();
  up_pass.clear();
  down_pass.clear();
  size_t row_off = 0, h_off = 0;
  for (const ExpertTask& t : tasks) {
    const int n = static_cast<int>(t.n), I = static_cast<int>(t.intermediate);
    const int32_t* in = dev_rows + row_off;
    const int32_t* out = in + t.n;
    MatmulDesc d = blank_desc();
    d.w = dev_mat(t.w.gate);
    d.x = X.f32();
    d.ldx = static_cast<int>(X.pitch());
    d.x_rows = in;
    d.y = h + h_off;
    d.ldy = I;
    d.T = n;
    if (n <= kMatvecRows) {
      d.w2 = dev_mat(t.w.up);
      d.mode = kDual;
      gate_pass.push_back(d);
    } else {
      d.mode = kStore;
      gate_pass.push_back(d);
      d.w = dev_mat(t.w.up);
      d.mode = kSwiglu;
      up_pass.push_back(d);
    }
    MatmulDesc o = blank_desc();
    o.w = dev_mat(t.w.down);
    o.x = h + h_off;
    o.ldx = I;
    o.y = slots.f32();
    o.y_rows = out;
    o.ldy = static_cast<int>(slots.pitch());
    o.T = n;
    o.mode = kStore;
    down_pass.push_back(o);
    row_off += 2 * t.n;
    h_off += t.n * t.intermediate;
  }
  run_matmuls(gate_pass);
  if (!up_pass.empty()) run_matmuls(up_pass);
  run_matmuls(down_pass);
}

void CudaBackend::expert_ffn_indexed(const Tensor& X, const int32_t* ids, size_t k,
                                     const IndexedExperts& ex, const Tensor& slots, size_t S) {
  const OpTimer timer(*this, "expert_indexed");
  MF_ASSERT(X.rank == 2 && slots.rank == 2 && slots.shape[1] == X.shape[1] && ids != nullptr);
  MF_ASSERT(ex.gate.fmt == ex.up.fmt && ex.gate.rows == ex.up.rows && ex.down.cols == ex.gate.rows);
  const size_t T = X.rows(), pairs = T * k, I = ex.gate.rows, H = X.shape[1];
  if (pairs == 0) return;
  // Scratch: [descriptors: 2 * pairs | h: pairs * I floats].
  const size_t desc_bytes = (2 * pairs * sizeof(MatmulDesc) + 255) / 256 * 256;
  uint8_t* base = reinterpret_cast<uint8_t*>(scratch(desc_bytes + pairs * I * sizeof(float)));
  auto* descs = reinterpret_cast<MatmulDesc*>(base);
  float* h = reinterpret_cast<float*>(base + desc_bytes);
  const DevMat gate = relative_mat(ex.gate), up = relative_mat(ex.up), down = relative_mat(ex.down);
  indexed_descs_kernel<<<blocks_for(pairs, 64), 64, 0, stream_>>>(
      ids, int(pairs), int(k), ex.records, gate, up, down, X.f32(), int(X.pitch()), h, int(I),
      slots.f32(), int(slots.pitch()), int(S), descs, descs + pairs);
  check_launch("expert_ffn_indexed (descriptors)");
  // The formats are the records' (one per layer), so the kernels are chosen here.
  launch_matvec(matvec_code(gate, &up), descs, int(pairs), int(I), pairs * I, 1, int(H),
                /*dual=*/true, stream_, /*descs_written=*/true);
  launch_matvec(matvec_code(down, nullptr), descs + pairs, int(pairs), int(H), pairs * H, 1, int(I),
                /*dual=*/false, stream_, /*descs_written=*/true);
}

}  // namespace moeflux::cuda
