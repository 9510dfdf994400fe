// Routing traces: which experts each token chose in each MoE layer. Recorded from real runs
// (`moeflux logits --routing-trace`, train/dump_routing.py) and replayed by `moeflux cache-sim`
// to compare cache policies and prefetch on real routing.
//
// File format (JSON Lines): a header line {"format": "moeflux-routing-trace", "version": 1,
// "num_layers": L, "num_experts": E, "top_k": K}, then one line per token:
// {"pos": p, "experts": [[...], [...], ...]} with one list per layer ([] for dense layers).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace moeflux {

struct RoutingTrace {
  int num_layers = 0, num_experts = 0, top_k = 0;
  std::vector<std::vector<std::vector<int>>> tokens;  // [token][layer] -> experts

  // Throws moeflux::Error naming the file and line on malformed input.
  static RoutingTrace load(const std::string& path);
  // Writes the trace (core/output_file.hpp: a regular file atomically, a FIFO or device in
  // place). Throws moeflux::Error naming `what` (the option, if any) and the path.
  void save(const std::string& path, const std::string& what = "") const;

  // Uniform random routing with the same shape (for comparison with real routing).
  static RoutingTrace random(int num_layers, int num_experts, int top_k,
                             const std::vector<bool>& layer_is_moe, size_t n_tokens, uint64_t seed);
};

}  // namespace moeflux
