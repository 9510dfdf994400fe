// Synthetic packages: random weights with the published shapes of a model, written with the
// same PackageWriter as `convert`, so everything that reads a converted package reads these.
//
// What the weights are (chosen so activations stay finite through any number of layers):
//   - matrices W[rows, cols] (stored bf16, the router too): uniform on (-a, a] with
//     a = sqrt(3) * sigma, sigma = 1/sqrt(cols) (fan-in), so W x keeps the scale of x;
//     embed_tokens: sigma = 1 (rows are RMS-normalised before use anyway);
//   - RMSNorm weights at their neutral value: 0 for zero-centred norms (qwen3_5_moe: x*(1+w)),
//     1 otherwise; the Gated DeltaNet output norm is plain (w = 1); biases 0;
//   - Gated DeltaNet: A_log = log(uniform(1, 16)), dt_bias = 1, conv1d sigma = 1/sqrt(kernel);
//   - routed experts in the requested format. bf16/f16/f32 (or quantize_each): fresh random
//     floats per expert through cpu::quantize_matrix. Quantized formats (default): per layer and
//     part, one template quantized with cpu::quantize_matrix from uniform floats gives the
//     scales (and biases); each expert's codes are the template's XOR a per-expert random
//     stream, i.e. independent uniform codes (q8_0: -128 mapped to -127, the quantizer's range)
//     - the distribution quantize_matrix gives on uniform floats, at memory speed instead of
//     the quantizer's ~125 MB/s per core for q4.
// Every random value is a pure function of (seed, tensor or expert, block index): the output is
// identical for any thread count, and different seeds give different files.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/quant_format.hpp"
#include "model/config.hpp"

namespace moeflux {

struct SynthPreset {
  std::string name;         // "qwen3-30b-a3b"
  Family family;            // the family its config parses to
  std::string description;  // one line: the model and where its values come from
  bool test_only = false;   // tiny shapes for unit tests (not a published model)
  nlohmann::json config;    // the model's config.json (text model or VL wrapper), HF spelling
};

// All presets, published models first.
const std::vector<SynthPreset>& synth_presets();
// The preset named `name`; throws moeflux::Error listing the known names.
const SynthPreset& find_synth_preset(const std::string& name);

// The preset's config.json cut to its first `layers` layers (0 = all): num_hidden_layers,
// layer_types and mlp_only_layers are truncated, so the layer-type pattern is preserved.
// Throws moeflux::Error when layers exceeds the preset's count.
nlohmann::json synth_config_json(const SynthPreset& p, int layers);

struct SynthOptions {
  std::string family;  // must equal family_name(preset.family); empty = not checked
  std::string preset;
  int layers = 0;  // keep the first N layers; 0 = all
  QuantFormat experts = QuantFormat::q4();
  // Non-expert matrices (routers stay bf16); empty = bf16, as the published checkpoints.
  std::optional<QuantFormat> resident;
  uint64_t seed = 1;
  bool quantize_each = false;  // quantize every expert from fresh floats (CPU-bound, slower)
  bool force = false;          // replace an existing OUT_DIR
  bool progress = true;        // progress lines on stderr
  bool dry_run = false;        // validate and describe (header lines on stderr), write nothing
  size_t threads = 0;          // generation threads (0 = hardware)
};

struct SynthSummary {
  uint64_t resident_bytes = 0;
  uint64_t expert_bytes = 0;  // all layer files
  int moe_layers = 0;
  double seconds = 0;  // wall time including the final fsync and rename
};

// Writes the package atomically (as convert does: "<out_dir>.partial-<pid>", manifest last,
// rename). Arguments are validated before anything is created. Throws moeflux::Error; on any
// failure nothing is left behind. With dry_run, returns after validation and the header lines
// (sizes and parameter counts) with the byte counts it would write and seconds = 0.
SynthSummary synthesize_package(const std::string& out_dir, const SynthOptions& opts);

}  // namespace moeflux
