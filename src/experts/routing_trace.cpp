#include "experts/routing_trace.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.hpp"
#include "core/output_file.hpp"

namespace moeflux {

using nlohmann::json;

RoutingTrace RoutingTrace::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path + ": cannot open");
  RoutingTrace t;
  std::string line;
  size_t lineno = 0;
  auto where = [&] { return path + ":" + std::to_string(lineno); };
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      fail(where() + ": invalid JSON: " + e.what());
    }
    try {
      if (lineno == 1) {
        if (j.value("format", "") != "moeflux-routing-trace") fail(where() + ": not a moeflux routing trace");
        t.num_layers = j.at("num_layers").get<int>();
        t.num_experts = j.at("num_experts").get<int>();
        t.top_k = j.at("top_k").get<int>();
        if (t.num_layers <= 0 || t.num_experts <= 0 || t.top_k <= 0) fail(where() + ": invalid header");
        continue;
      }
      auto experts = j.at("experts").get<std::vector<std::vector<int>>>();
      if (static_cast<int>(experts.size()) != t.num_layers)
        fail(where() + ": " + std::to_string(experts.size()) + " layers, header says " +
             std::to_string(t.num_layers));
      for (const auto& l : experts)
        for (int e : l)
          if (e < 0 || e >= t.num_experts) fail(where() + ": expert id " + std::to_string(e) + " out of range");
      t.tokens.push_back(std::move(experts));
    } catch (const json::exception& e) {
      fail(where() + ": malformed trace line: " + e.what());
    }
  }
  if (lineno == 0) fail(path + ": empty trace");
  return t;
}

void RoutingTrace::save(const std::string& path, const std::string& what) const {
  std::string text = json{{"format", "moeflux-routing-trace"},
                          {"version", 1},
                          {"num_layers", num_layers},
                          {"num_experts", num_experts},
                          {"top_k", top_k}}
                         .dump() +
                     "\n";
  for (size_t p = 0; p < tokens.size(); ++p)
    text += json{{"pos", p}, {"experts", tokens[p]}}.dump() + "\n";
  write_output_file(path, {text}, what);
}

RoutingTrace RoutingTrace::random(int num_layers, int num_experts, int top_k,
                                  const std::vector<bool>& layer_is_moe, size_t n_tokens, uint64_t seed) {
  RoutingTrace t;
  t.num_layers = num_layers;
  t.num_experts = num_experts;
  t.top_k = top_k;
  std::mt19937_64 rng(seed);
  std::vector<int> ids(num_experts);
  std::iota(ids.begin(), ids.end(), 0);
  for (size_t p = 0; p < n_tokens; ++p) {
    std::vector<std::vector<int>> layers(num_layers);
    for (int l = 0; l < num_layers; ++l) {
      if (!layer_is_moe[l]) continue;
      std::shuffle(ids.begin(), ids.end(), rng);
      layers[l].assign(ids.begin(), ids.begin() + top_k);
    }
    t.tokens.push_back(std::move(layers));
  }
  return t;
}

}  // namespace moeflux
