// libFuzzer target: ModelConfig::from_hf_json on an arbitrary config.json (what `convert` reads
// from a downloaded checkpoint).
//
// Any input must either parse into a config whose invariants hold (positive sizes, layer lists as
// long as num_layers, top_k <= num_experts, an even rotary dimension within head_dim, the package
// round trip to_json -> from_json giving the same config) or throw moeflux::Error with a one-line
// message. Anything else is a finding.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.hpp"
#include "model/config.hpp"

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "hf_config_fuzz: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j =
      nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;  // not JSON: the caller's parse error, not ours
  try {
    const moeflux::ModelConfig c = moeflux::ModelConfig::from_hf_json(j, "config.json");
    if (c.num_layers <= 0 || static_cast<int>(c.layer_kind.size()) != c.num_layers ||
        static_cast<int>(c.layer_is_moe.size()) != c.num_layers)
      finding("layer lists");
    if (c.hidden_size <= 0 || c.vocab_size <= 0 || c.head_dim <= 0 || c.num_heads <= 0 ||
        c.num_kv_heads <= 0)
      finding("non-positive size");
    if (c.num_moe_layers() > 0 && (c.top_k <= 0 || c.top_k > c.num_experts)) finding("top_k");
    if (c.rotary_dim() <= 0 || c.rotary_dim() % 2 != 0 || c.rotary_dim() > c.head_dim)
      finding("rotary dim");
    const moeflux::ModelConfig back = moeflux::ModelConfig::from_json(c.to_json(), "manifest.json");
    if (back.to_json() != c.to_json()) finding("package round trip changed the config");
  } catch (const moeflux::Error& e) {
    const std::string msg = e.what();
    if (msg.empty() || msg.find('\n') != std::string::npos)
      finding("error message not one line: " + msg);
  }
  return 0;
}
