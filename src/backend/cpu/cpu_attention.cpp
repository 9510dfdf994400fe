// CpuBackend::attention: causal attention with GQA over a preallocated KV cache.
//
// For each query row t (position p = pos0 + t) and head h (kv head g = h / (heads / kv_heads)):
//   s_j = scale · q[t,h] · K[j,g]  (j <= p),  w = softmax(s),  out[t,h] = Σ_j w_j V[j,g]
// and out[t,h] *= sigmoid(gate[t,h]) when gated; keys are dk wide, values dv. The chunk's own
// keys and values are written into the cache first (keys before values: a value column view of
// the keys, MLA's, is rewritten with the same numbers), so a row sees the rows before it in
// the chunk (causal) and the sequence's earlier positions.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_backend.hpp"
#include "backend/cpu/ops.hpp"
#include "backend/cpu/vec.hpp"

namespace moeflux {

void CpuBackend::attention(const AttentionArgs& a) {
  MF_ASSERT(a.q.rank == 3 && a.k.rank == 3 && a.v.rank == 3 && a.cache != nullptr);
  const size_t T = a.q.shape[0], nh = a.q.shape[1], dk = a.q.shape[2], nkv = a.k.shape[1];
  const size_t dv = a.v.shape[2];
  MF_ASSERT(a.k.shape[0] == T && a.k.shape[2] == dk && a.v.shape[0] == T && a.v.shape[1] == nkv);
  MF_ASSERT(nkv > 0 && nh % nkv == 0 && a.pos0 >= 0);
  MF_ASSERT(a.out.rank == 2 && a.out.rows() == T && a.out.shape[1] == nh * dv);
  MF_ASSERT(a.gate.empty() ||
            (a.gate.rank == 3 && a.gate.shape[0] == T && a.gate.shape[1] == nh &&
             a.gate.shape[2] == dv));
  KvCache& c = *a.cache;
  const size_t pos0 = static_cast<size_t>(a.pos0);
  MF_ASSERT(c.k.shape[1] == nkv * dk && c.v.shape[1] == nkv * dv && pos0 + T <= c.k.rows() &&
            c.v.rows() == c.k.rows());

  for (size_t t = 0; t < T; ++t)
    for (size_t g = 0; g < nkv; ++g) {
      std::memmove(c.k.row(pos0 + t) + g * dk, a.k.vec(t, g), dk * sizeof(float));
      std::memmove(c.v.row(pos0 + t) + g * dv, a.v.vec(t, g), dv * sizeof(float));
    }

  // Units: (row, kv head, block of hb query heads sharing it): the block's heads read the kv
  // head's keys and values while they are in cache. hb is the group unless that leaves threads
  // idle (decode: one row).
  const size_t group = nh / nkv;
  const size_t want = std::max<size_t>(1, threads() / std::max<size_t>(1, T * nkv));
  const size_t hb = std::max<size_t>(1, group / std::min(want, group));
  const size_t blocks = (group + hb - 1) / hb;
  const size_t capacity = c.k.rows();
  const size_t k_stride = c.k.pitch(), v_stride = c.v.pitch();
  auto unit = [&](size_t ub, size_t ue) {
    thread_local std::vector<float> scores;  // sized once to the cache's capacity
    if (scores.size() < capacity) scores.resize(capacity);
    for (size_t u = ub; u < ue; ++u) {
      const size_t t = u / (nkv * blocks), g = (u / blocks) % nkv, b = u % blocks;
      const size_t len = pos0 + t + 1;
      const float* K = c.k.row(0) + g * dk;
      const float* V = c.v.row(0) + g * dv;
      for (size_t h = g * group + b * hb; h < std::min(g * group + (b + 1) * hb, (g + 1) * group);
           ++h) {
        cpu::dot_rows(a.q.vec(t, h), K, k_stride, len, dk, a.scale, scores.data());
        cpu::softmax(scores.data(), len);
        float* o = a.out.row(t) + h * dv;
        cpu::weighted_rows(scores.data(), V, v_stride, len, dv, o);
        if (!a.gate.empty()) {
          const float* gt = a.gate.vec(t, h);
          for (size_t d = 0; d < dv; ++d) o[d] *= cpu::sigmoid(gt[d]);
        }
      }
    }
  };
  // One row (decode): units of equal cost, statically (each thread gets the same units every
  // token: its scratch never grows); causal rows of a prompt: dynamically.
  if (T == 1)
    pool_.parallel_for(nkv * blocks, unit);
  else
    pool_.parallel_for_dynamic(T * nkv * blocks, unit);
}

}  // namespace moeflux
