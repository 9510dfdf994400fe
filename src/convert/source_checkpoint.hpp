// A Hugging Face (or MLX-quantized) checkpoint seen as the model's tensors: finds the text
// model's name prefix (plain, vision-language wrapper), recognises the expert layout of each
// MoE layer, and yields matrices as MatrixViews straight into the mapped safetensors.
//
// Expert layouts recognised, per MoE layer (P = the text prefix, e.g. "model." or
// "model.language_model."):
//   per expert : P layers.N.mlp.experts.E.{gate,up,down}_proj.weight      [I,H] [I,H] [H,I]
//   stacked    : P layers.N.mlp.experts.gate_up_proj [E, 2I, H] (gate rows first),
//                P layers.N.mlp.experts.down_proj    [E, H, I]           (transformers 5)
//   MLX switch : P layers.N.mlp.switch_mlp.{gate,up,down}_proj.{weight,scales,biases}
//                weight uint32 [E, rows, cols*bits/32], scales/biases bf16 [E, rows, cols/group]
// Any matrix may be MLX-quantized: `X.weight` uint32 + `X.scales` + `X.biases`; its bits (2, 3, 4,
// 5, 6 or 8) and group size follow from the shapes (checked against the config's `quantization`
// block, whose per-module entries may hold null for "the default" or false for "unquantized").
// FP8 matrices (DeepSeek-V3's published checkpoints): `X.weight` F8_E4M3 with `X.weight_scale_inv`
// (F32 or BF16, one scale per block of quantization_config.weight_block_size, default 128x128)
// are decoded to bf16 as bf16(float(code) · scale) — DeepSeek's fp8_cast_bf16 — into a buffer
// the caller provides, one matrix at a time (no bf16 copy of the model anywhere).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/quant_format.hpp"
#include "formats/safetensors.hpp"
#include "model/config.hpp"

namespace moeflux {

enum class ExpertPartId { Gate, Up, Down };

class SourceCheckpoint {
 public:
  // Reads DIR/config.json and the safetensors files. Throws moeflux::Error.
  static SourceCheckpoint open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const nlohmann::json& config_json() const { return config_json_; }
  const ModelConfig& config() const { return config_; }
  const std::string& prefix() const { return prefix_; }
  bool mlx_quantized() const { return mlx_; }

  // A resident matrix by its package name ("layers.0.self_attn.q_proj.weight",
  // "lm_head.weight"), shape-checked. An FP8 matrix is decoded into *decoded (bf16), which the
  // view then points into; without a buffer an FP8 matrix is an error.
  MatrixView matrix(const std::string& name, size_t rows, size_t cols,
                    std::vector<uint8_t>* decoded = nullptr) const;
  // A vector (any float dtype) as f32, shape-checked.
  std::vector<float> vector(const std::string& name, size_t n) const;
  // The depthwise conv1d weight as f32 [channels, kernel]; accepts [C,1,K], [C,K,1], [C,K].
  std::vector<float> conv_weight(const std::string& name, size_t channels, size_t kernel) const;
  // One matrix of routed expert `e` of layer `layer`. MLX codes of 2, 3, 5 or 6 bits come as
  // Affine views of that width, which only convert/affine_widen.hpp reads.
  MatrixView expert(int layer, int e, ExpertPartId part,
                    std::vector<uint8_t>* decoded = nullptr) const;
  // The format a view of the layer's `part` matrices has (FP8: bf16, what it decodes to).
  QuantFormat expert_part_format(int layer, ExpertPartId part) const;
  // The format the layer's experts are stored in (its expert 0's gate).
  QuantFormat expert_format(int layer) const { return expert_part_format(layer, ExpertPartId::Gate); }
  // The checkpoint tensor that holds the layer's `part` matrices (for messages).
  std::string expert_tensor_name(int layer, ExpertPartId part) const;

  // Tensors under the text prefix that the converter did not use (for a warning).
  std::vector<std::string> unused_tensors(const std::vector<std::string>& used) const;

 private:
  // Where a routed expert's matrix lives: slice `lead` of `n_lead` (0: not stacked) of tensor
  // `weight` (per-slice shape [total_rows, cols]), rows [row0, row0 + rows).
  struct ExpertSource {
    std::string weight, quant_base;
    size_t lead, n_lead, total_rows, cols, row0, rows;
  };
  ExpertSource locate_expert(int layer, int e, ExpertPartId part) const;
  std::string full_name(const std::string& name) const;
  // The qwen3_5 norms computed as x * (1 + w) (not the DeltaNet's gated norm).
  bool is_zero_centered_norm(const std::string& name) const;
  // Throws when the config's MLX quantization block disagrees with the bits / group size the
  // tensor shapes imply for module `base`.
  void check_quantization_block(const std::string& base, int bits, int group) const;
  // Views rows [row0, row0 + rows) of slice `lead` of a (possibly stacked, possibly
  // MLX-quantized) weight whose per-slice shape is [total_rows, cols].
  MatrixView view(const std::string& weight_name, const std::string& quant_base, size_t lead,
                  size_t n_lead, size_t total_rows, size_t cols, size_t row0, size_t rows,
                  std::vector<uint8_t>* decoded) const;
  // Rows [row0, row0 + rows) of the FP8 matrix w ([total_rows, cols]) decoded to bf16 into *out.
  MatrixView decode_fp8(const TensorInfo& w, size_t total_rows, size_t cols, size_t row0,
                        size_t rows, std::vector<uint8_t>* out) const;

  std::string dir_;
  nlohmann::json config_json_;
  ModelConfig config_;
  Checkpoint ckpt_;
  std::string prefix_;
  std::string lm_head_name_;  // full name of lm_head's weight, "" when tied/absent
  bool mlx_ = false;
  bool mlx_shifted_norms_ = false;  // mlx-lm sanitized qwen3_5: zero-centred norms hold 1 + w
};

}  // namespace moeflux
