// CudaBackend::expert_ffn: every task's SwiGLU FFN over its rows of X, into its slot rows.
//
// Three batched product launches (per weight format) for all tasks together, after every task's
// weights have landed (ExpertTask::ready, waited for on the device):
//   1. h = silu(gate x) * up x: tasks of few rows in one dual matrix-vector pass (gate and up
//      rows streamed side by side); tasks of many rows as a GEMM storing gate x, then
//   1b. a GEMM of up whose epilogue makes h = silu(stored) * up x;
//   2. slots[out_rows] = down h.
// Row lists are staged to the device once per call; h lives in the backend's scratch.
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_backend.cuh"
#include "backend/cuda/cuda_check.hpp"

namespace moeflux::cuda {

namespace {

// expert_ffn_indexed's descriptors written out, both passes (MOEFLUX_CUDA_INDEXED_DESCS=1: the
// way before the matrix-vector launches built their own, to compare): descs[pass * pairs + p].
__global__ void indexed_descs_kernel(IndexedProducts ix, int pairs, MatmulDesc* descs) {
  await_inputs();
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  ix.down_pass = 0;
  descs[p] = indexed_product(ix, p);
  ix.down_pass = 1;
  descs[pairs + p] = indexed_product(ix, p);
}

// out[e] = Σ_{e' < e} f(in[e']) for e < n, by one warp: lane l sums a contiguous run of n / 32.
template <typename F>
__device__ void exclusive_scan_warp(const int* in, int* out, int n, F f) {
  const int lane = threadIdx.x % 32, each = (n + 31) / 32;
  const int e0 = min(n, lane * each), e1 = min(n, e0 + each);
  int run = 0;
  for (int e = e0; e < e1; ++e) run += f(in[e]);
  int before = run;  // inclusive scan over lanes, then minus its own run
  for (int o = 1; o < 32; o *= 2) {
    const int v = __shfl_up_sync(0xffffffffu, before, o);
    if (lane >= o) before += v;
  }
  before -= run;
  for (int e = e0; e < e1; ++e) out[e] = before, before += f(in[e]);
}

// Prompts: the pairs grouped by expert on the device, so that each expert's GEMMs run over
// all of its rows and the host never reads the routing. One block of W warps; for E experts,
// P = T k pairs (p = t k + i: row t, rank i, expert ids[p]):
//   count[e] = #{p : ids[p] = e},  off[e] = Σ_{e' < e} count[e'],
//   the j-th pair of expert e in p order at position off[e] + j:  in_rows = t, out_rows = t S + i,
// and per tile of at most bn of an expert's pairs three GEMM descriptors (tile u of expert e is
// descriptor tile_off[e] + u; tile_off the exclusive scan of ceil(count / bn); descriptors past
// the last tile have no rows), for its pairs j in [u bn, min(count[e], (u + 1) bn)):
//   gate: h[off[e] + j] = gate_e X[in_rows[off[e] + j]]          (kStore)
//   up:   h[off[e] + j] = silu(h[...]) * up_e X[in_rows[...]]     (kSwiglu)
//   down: slots[out_rows[off[e] + j]] = down_e h[off[e] + j]       (kStore)
// so that a launch's blocks are the tiles that exist, not bn-wide tiles over T rows for every
// expert.
// A stable counting sort: warp w owns the pairs [w P/W, (w + 1) P/W); it counts its pairs per
// expert (hist[w][e]), the counts are scanned over experts and then over warps, and each warp
// places its pairs in order, 32 at a time (the lanes of one expert found by __match_any_sync,
// ranked by lane). Shared memory: [hist W E | count E | off E | tile_off E] ints. An id outside
// [0, E) traps (the router writes only valid ids). descs: [gate | up | down] of max_tiles each.
// xs_x / xsum_x: X's bf16 terms (gate and up gather its rows); xs_h / xsum_h: h's (down reads
// rows off + j0 on), or null where the SIMT GEMM runs (it reads x itself).
__global__ void group_pairs_kernel(const int32_t* ids, int pairs, int k, int E, int S,
                                   const uint8_t* const* records, DevMat gate, DevMat up,
                                   DevMat down, const float* X, int ldx, float* h, int I,
                                   float* slots, int lds, int32_t* in_rows, int32_t* out_rows,
                                   int bn, int max_tiles, const uint32_t* xs_x, const float* xsum_x,
                                   const uint32_t* xs_h, const float* xsum_h, MatmulDesc* descs) {
  extern __shared__ int group_sm[];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, W = blockDim.x / 32;
  int* hist = group_sm;
  int* count = group_sm + W * E;
  int* off = count + E;
  int* tile_off = off + E;
  int* mine = hist + warp * E;
  const int per = (pairs + W - 1) / W, lo = min(pairs, warp * per), hi = min(pairs, lo + per);
  await_inputs();
  for (int i = tid; i < W * E; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  for (int base = lo; base < hi; base += 32) {
    const int p = base + lane, e = p < hi ? ids[p] : -1;
    if (p < hi && (e < 0 || e >= E)) __trap();
    const unsigned same = __match_any_sync(0xffffffffu, e);
    if (e >= 0 && lane == __ffs(same) - 1) mine[e] += __popc(same);
    __syncwarp();
  }
  __syncthreads();
  for (int e = tid; e < E; e += blockDim.x) {  // hist[w][e]: pairs of e in warps before w
    int run = 0;
    for (int w = 0; w < W; ++w) {
      const int v = hist[w * E + e];
      hist[w * E + e] = run;
      run += v;
    }
    count[e] = run;
  }
  __syncthreads();
  if (warp == 0) exclusive_scan_warp(count, off, E, [](int c) { return c; });
  if (warp == W - 1)  // the same warp when W = 1, after the first scan
    exclusive_scan_warp(count, tile_off, E, [bn](int c) { return (c + bn - 1) / bn; });
  __syncthreads();
  for (int i = tid; i < W * E; i += blockDim.x) hist[i] += off[i % E];
  for (int e = tid; e < E; e += blockDim.x) {
    const uint8_t* rec = records[e];
    for (int j0 = 0, u = tile_off[e]; j0 < count[e]; j0 += bn, ++u) {
      MatmulDesc g = blank_desc();
      g.w = at_record(gate, rec);
      g.x = X;
      g.ldx = ldx;
      g.x_rows = in_rows + off[e] + j0;
      g.y = h + static_cast<size_t>(off[e] + j0) * I;
      g.ldy = I;
      g.T = min(bn, count[e] - j0);
      g.x_count = pairs / k;  // T: the rows of X that in_rows names
      g.xs = xs_x;
      g.xsum = xsum_x;
      g.mode = kStore;
      descs[u] = g;
      g.w = at_record(up, rec);
      g.mode = kSwiglu;
      descs[max_tiles + u] = g;
      MatmulDesc o = blank_desc();
      o.w = at_record(down, rec);
      o.x = g.y;
      o.ldx = I;
      o.y = slots;
      o.y_rows = out_rows + off[e] + j0;
      o.ldy = lds;
      o.T = g.T;
      if (xs_h) {
        o.xs = xs_h + static_cast<size_t>(off[e] + j0) * I;
        o.xsum = xsum_h + static_cast<size_t>(off[e] + j0) * (I / 32);
      }
      o.mode = kStore;
      descs[2 * max_tiles + u] = o;
    }
  }
  const int tiles = tile_off[E - 1] + (count[E - 1] + bn - 1) / bn;
  for (int u = tiles + tid; u < max_tiles; u += blockDim.x)
    for (int pass = 0; pass < 3; ++pass) descs[pass * max_tiles + u] = blank_desc();  // T = 0
  __syncthreads();
  for (int base = lo; base < hi; base += 32) {  // each warp over its own pairs, in order
    const int p = base + lane, e = p < hi ? ids[p] : -1;
    const unsigned same = __match_any_sync(0xffffffffu, e);
    const int leader = __ffs(same) - 1;
    if (e >= 0) {
      const int at = mine[e] + __popc(same & ((1u << lane) - 1u));
      in_rows[at] = p / k;
      out_rows[at] = (p / k) * S + p % k;
    }
    __syncwarp();
    if (e >= 0 && lane == leader) mine[e] += __popc(same);
    __syncwarp();
  }
}

// A DevMat of a record matrix at address 0: pointers hold byte offsets (scales and biases
// never start a record, so null still means absent).
// MOEFLUX_CUDA_INDEXED_DESCS=1: expert_ffn_indexed writes its descriptors with a kernel of
// their own (the way before; to compare).
bool indexed_descs_kernel_on() {
  static const bool on = env_is("MOEFLUX_CUDA_INDEXED_DESCS", "1");
  return on;
}

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
    d.x_count = static_cast<int>(X.rows());
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
  const OpTimer timer(*this, "expert_indexed", X.rows());
  MF_ASSERT(X.rank == 2 && slots.rank == 2 && slots.shape[1] == X.shape[1] && ids != nullptr);
  MF_ASSERT(ex.gate.fmt == ex.up.fmt && ex.gate.rows == ex.up.rows && ex.down.cols == ex.gate.rows);
  const size_t T = X.rows(), pairs = T * k, I = ex.gate.rows, H = X.shape[1];
  if (pairs == 0) return;
  // Few pairs per expert on average: one matrix-vector product per pair (each reads its
  // expert's weights); more: grouped by expert, a GEMM per expert.
  if (T > kMatvecRows && pairs >= kGroupedPairsPerExpert * ex.experts)
    return expert_ffn_grouped(X, ids, k, ex, slots, S);
  // Scratch: [descriptors: 2 * pairs (only to compare) | h: pairs * I floats].
  const size_t desc_bytes = (2 * pairs * sizeof(MatmulDesc) + 255) / 256 * 256;
  uint8_t* base = reinterpret_cast<uint8_t*>(scratch(desc_bytes + pairs * I * sizeof(float)));
  auto* descs = reinterpret_cast<MatmulDesc*>(base);
  IndexedProducts ix;
  ix.ids = ids;
  ix.records = ex.records;
  ix.gate = relative_mat(ex.gate);
  ix.up = relative_mat(ex.up);
  ix.down = relative_mat(ex.down);
  ix.X = X.f32();
  ix.ldx = int(X.pitch());
  ix.h = reinterpret_cast<float*>(base + desc_bytes);
  ix.I = int(I);
  ix.slots = slots.f32();
  ix.lds = int(slots.pitch());
  ix.S = int(S);
  ix.k = int(k);
  // The formats are the records' (one per layer), so the kernels are chosen here. Each block
  // builds its product from the ids (indexed_product) once the routing has landed; with
  // MOEFLUX_CUDA_INDEXED_DESCS=1 a kernel writes the descriptors first, as before.
  const int gate_code = matvec_code(ix.gate, &ix.up), down_code = matvec_code(ix.down, nullptr);
  if (indexed_descs_kernel_on()) {
    indexed_descs_kernel<<<blocks_for(pairs, 64), 64, 0, stream_>>>(ix, int(pairs), descs);
    check_launch("expert_ffn_indexed (descriptors)");
    launch_matvec(gate_code, descs, int(pairs), int(I), pairs * I, 1, int(H), /*dual=*/true,
                  stream_, /*descs_written=*/true);
    launch_matvec(down_code, descs + pairs, int(pairs), int(H), pairs * H, 1, int(I),
                  /*dual=*/false, stream_, /*descs_written=*/true);
    return;
  }
  launch_matvec(gate_code, nullptr, int(pairs), int(I), pairs * I, 1, int(H), /*dual=*/true,
                stream_, /*descs_written=*/true, &ix);
  ix.down_pass = 1;
  launch_matvec(down_code, nullptr, int(pairs), int(H), pairs * H, 1, int(I), /*dual=*/false,
                stream_, /*descs_written=*/true, &ix);
}

void CudaBackend::expert_ffn_grouped(const Tensor& X, const int32_t* ids, size_t k,
                                     const IndexedExperts& ex, const Tensor& slots, size_t S) {
  const size_t T = X.rows(), pairs = T * k, I = ex.gate.rows, H = X.shape[1], E = ex.experts;
  // Warps of the grouping block: as many as its shared memory holds histograms for (<= 48 KB).
  if (E == 0 || 4 * E > 12 * 1024)
    fail("CUDA backend: " + std::to_string(E) + " experts are more than the grouping kernel takes");
  const size_t group_warps = std::min<size_t>(32, (12 * 1024 - 3 * E) / E);
  // The tile width for the mean count, pairs / E; at most pairs / bn + E tiles (Σ ceil).
  const size_t mean = std::max<size_t>(1, pairs / E);
  const int bn = gemm_tile_width(E * blocks_for(mean, 32), E * blocks_for(mean, 64));
  const size_t max_tiles = blocks_for(pairs, size_t(bn)) + E;
  // Scratch: [descriptors: 3 max_tiles | in_rows, out_rows: pairs ints each | h: pairs I floats].
  auto round = [](size_t b) { return (b + 255) / 256 * 256; };
  const size_t desc_bytes = round(3 * max_tiles * sizeof(MatmulDesc));
  const size_t row_bytes = round(2 * pairs * sizeof(int32_t));
  uint8_t* base = reinterpret_cast<uint8_t*>(scratch(desc_bytes + row_bytes + pairs * I * 4));
  auto* descs = reinterpret_cast<MatmulDesc*>(base);
  auto* in_rows = reinterpret_cast<int32_t*>(base + desc_bytes);
  float* h = reinterpret_cast<float*>(base + desc_bytes + row_bytes);
  const DevMat gate = relative_mat(ex.gate), up = relative_mat(ex.up), down = relative_mat(ex.down);
  const bool aligned = ex.record_alignment % 16 == 0;
  const int gate_kernel = gemm_kernel_for(gate, aligned),
            down_kernel = gemm_kernel_for(down, aligned);
  // The tensor-core GEMM's inputs split into bf16 terms: X (T x H) before gate and up, h
  // (pairs x I) once up has made it.
  uint32_t *xs_x = nullptr, *xs_h = nullptr;
  float *xsum_x = nullptr, *xsum_h = nullptr;
  {
    const size_t x_terms = round(T * H * 4), x_sums = round(T * H / 32 * 4);
    const size_t h_terms = round(pairs * I * 4), h_sums = round(pairs * I / 32 * 4);
    auto* split =
        static_cast<uint8_t*>(xsplit_scratch_.get(x_terms + x_sums + h_terms + h_sums, stream_));
    if (is_tensor_gemm(gate_kernel)) {
      xs_x = reinterpret_cast<uint32_t*>(split);
      xsum_x = reinterpret_cast<float*>(split + x_terms);
      split_rows(X.f32(), int(X.pitch()), int(T), int(H), xs_x, xsum_x);
    }
    if (is_tensor_gemm(down_kernel)) {
      xs_h = reinterpret_cast<uint32_t*>(split + x_terms + x_sums);
      xsum_h = reinterpret_cast<float*>(split + x_terms + x_sums + h_terms);
    }
  }
  group_pairs_kernel<<<1, unsigned(32 * group_warps), (group_warps + 3) * E * sizeof(int),
                       stream_>>>(ids, int(pairs), int(k), int(E), int(S), ex.records, gate, up,
                                  down, X.f32(), int(X.pitch()), h, int(I), slots.f32(),
                                  int(slots.pitch()), in_rows, in_rows + pairs, bn, int(max_tiles),
                                  xs_x, xsum_x, xs_h, xsum_h, descs);
  check_launch("expert_ffn_grouped (grouping)");
  // The tiles stay on the device: each launch covers max_tiles descriptors of at most bn rows,
  // those past the last tile return at once.
  const int n = int(max_tiles);
  launch_gemm(gate_kernel, descs, n, int(I), bn, bn, H % 64 == 0, stream_);
  launch_gemm(gate_kernel, descs + max_tiles, n, int(I), bn, bn, H % 64 == 0, stream_);
  if (xs_h) split_rows(h, int(I), int(pairs), int(I), xs_h, xsum_h);
  launch_gemm(down_kernel, descs + 2 * max_tiles, n, int(H), bn, bn, I % 64 == 0, stream_);
}

}  // namespace moeflux::cuda
