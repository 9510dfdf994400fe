// CpuBackend::route: the routers of backend.hpp's RouterKind, one token per unit of work.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.hpp"
#include "backend/cpu/ops.hpp"

namespace moeflux {

namespace {

// Softmax top-k: p = softmax(logits); the k largest p, weights p (/ Σ p if norm_topk_prob).
void softmax_top_k(const float* logits, size_t E, const RouterSpec& spec, float* probs,
                   int32_t* ids, float* w) {
  const size_t k = static_cast<size_t>(spec.top_k);
  std::copy_n(logits, E, probs);
  cpu::softmax(probs, E);
  cpu::top_k(probs, E, k, ids);
  float sum = 0;
  for (size_t i = 0; i < k; ++i) sum += probs[ids[i]];
  for (size_t i = 0; i < k; ++i) w[i] = spec.norm_topk_prob ? probs[ids[i]] / sum : probs[ids[i]];
}

// noaux_tc (RouterKind::SigmoidGroupTopK). scratch: [2E + n_group] floats.
void sigmoid_group_top_k(const float* logits, size_t E, const RouterSpec& spec, float* scratch,
                         int32_t* ids, float* w) {
  const size_t k = static_cast<size_t>(spec.top_k), G = static_cast<size_t>(spec.n_group);
  const size_t per = E / G, keep = static_cast<size_t>(spec.topk_group);
  float* s = scratch;              // [E] sigmoid scores
  float* c = scratch + E;          // [E] choice scores
  float* group = scratch + 2 * E;  // [G] group scores
  for (size_t e = 0; e < E; ++e) {
    s[e] = 1.0f / (1.0f + std::exp(-logits[e]));
    c[e] = s[e] + spec.bias[e];
  }
  for (size_t g = 0; g < G; ++g) {  // sum of the group's two largest choice scores
    float a = -INFINITY, b = -INFINITY;
    for (size_t e = g * per; e < (g + 1) * per; ++e) {
      if (c[e] > a) {
        b = a;
        a = c[e];
      } else if (c[e] > b) {
        b = c[e];
      }
    }
    group[g] = a + b;
  }
  // Group g is kept when fewer than topk_group groups rank above it (a larger score, or an
  // equal one at a lower index); the experts of the others drop out (choice score -inf).
  for (size_t g = 0; g < G && keep < G; ++g) {
    size_t above = 0;
    for (size_t o = 0; o < G; ++o) above += group[o] > group[g] || (group[o] == group[g] && o < g);
    if (above >= keep) std::fill(c + g * per, c + (g + 1) * per, -INFINITY);
  }
  cpu::top_k(c, E, k, ids);
  float sum = 0;
  for (size_t i = 0; i < k; ++i) sum += s[ids[i]];
  const float norm = spec.norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
  for (size_t i = 0; i < k; ++i) w[i] = s[ids[i]] * norm * spec.routed_scaling_factor;
}

}  // namespace

void CpuBackend::route(const Tensor& logits, const RouterSpec& spec, const RouteOutput& out) {
  MF_ASSERT(logits.rank == 2 && spec.top_k > 0 && out.k == static_cast<size_t>(spec.top_k));
  const size_t T = logits.rows(), E = logits.shape[1];
  MF_ASSERT(out.k <= E && out.ids && out.weights);
  const bool grouped = spec.kind == RouterKind::SigmoidGroupTopK;
  if (grouped) {
    MF_ASSERT(spec.bias && spec.n_group > 0 && E % size_t(spec.n_group) == 0 &&
              E / size_t(spec.n_group) >= 2 && spec.topk_group > 0 &&
              spec.topk_group <= spec.n_group);
    MF_ASSERT(out.k <= size_t(spec.topk_group) * (E / size_t(spec.n_group)));
  } else {
    MF_ASSERT(spec.kind == RouterKind::SoftmaxTopK);
  }
  pool_.parallel_for(
      T,
      [&](size_t b, size_t e) {
        thread_local std::vector<float> scratch;
        if (scratch.size() < 2 * E + size_t(spec.n_group)) scratch.resize(2 * E + spec.n_group);
        for (size_t t = b; t < e; ++t) {
          int32_t* ids = out.ids + t * out.k;
          float* w = out.weights + t * out.k;
          if (grouped)
            sigmoid_group_top_k(logits.row(t), E, spec, scratch.data(), ids, w);
          else
            softmax_top_k(logits.row(t), E, spec, scratch.data(), ids, w);
          // The copies in backend memory (RouteOutput): other buffers of host memory here.
          if (out.device_weights && out.device_weights != out.weights)
            std::copy_n(w, out.k, out.device_weights + t * out.k);
          if (out.device_ids && out.device_ids != out.ids)
            std::copy_n(ids, out.k, out.device_ids + t * out.k);
        }
      },
      std::max<size_t>(1, 16384 / (E * 8)));
}

}  // namespace moeflux
