// HF / MLX checkpoint -> moeflux package (formats/package.hpp).
#pragma once

#include <optional>
#include <string>

#include "core/quant_format.hpp"

namespace moeflux {

struct ConvertOptions {
  // Format of routed experts; empty = keep the checkpoint's (bf16 stays bf16, MLX q4 stays q4).
  std::optional<QuantFormat> experts_format;
  // Format of the other matrices (attention, shared expert, dense MLPs, embedding, LM head);
  // empty = keep the checkpoint's. Routing matrices and matrices whose width the format cannot
  // split into blocks keep theirs.
  std::optional<QuantFormat> resident_format;
  bool force = false;    // replace an existing OUT_DIR
  bool progress = true;  // progress lines on stderr
  size_t threads = 0;    // quantization threads (0 = hardware)
};

struct ConvertSummary {
  uint64_t resident_bytes = 0;
  uint64_t expert_bytes = 0;  // all layer files
  int moe_layers = 0;
  double seconds = 0;
};

// Converts atomically: everything is written under "<out_dir>.partial-<pid>" and renamed to
// out_dir at the end, so an interrupted conversion never leaves a directory that loads.
// Throws moeflux::Error (the partial directory is removed).
ConvertSummary convert_checkpoint(const std::string& hf_dir, const std::string& out_dir,
                                  const ConvertOptions& opts);

}  // namespace moeflux
