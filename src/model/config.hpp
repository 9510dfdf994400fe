// ModelConfig: the runtime shape of a model, read from a Hugging Face config.json.
//
// Config is data (docs/DESIGN.md): every dimension comes from here at run time. Every spelling a
// released transformers writes is accepted: 4.x (`rope_theta`, `rope_scaling`,
// `partial_rotary_factor` at top level, `torch_dtype`) and 5.x (`rope_parameters`, also per layer
// type; `dtype`; attribute-map names such as qwen3_moe's `num_local_experts`; legacy layer type
// names), and vision-language wrappers (`text_config`). Values a model cannot run with (rope_theta
// <= 0, rms_norm_eps <= 0, zero heads, top_k > experts, non-finite numbers, ...) are refused at
// load with the key's name, from config.json and from a package manifest alike.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moeflux {

enum class Family { Qwen3Moe, Qwen3_5Moe, DeepseekV3, Glm4Moe };
const char* family_name(Family f);

// FullAttention: GQA with a K/V cache; LinearAttention: Gated DeltaNet; LatentAttention:
// DeepSeek's multi-head latent attention (MLA) with the compressed cache (latent + rope key).
enum class LayerKind { FullAttention, LinearAttention, LatentAttention };

// Rotary position embedding. The rotated part of a head is its first `rotary_dim` dims, split
// in halves (rotate_half convention): x' = x * cos(p * inv_freq) + rotate_half(x) * sin(...).
struct RopeConfig {
  std::string type = "default";  // default | linear | yarn
  double theta = 10000.0;
  double partial_rotary_factor = 1.0;
  double factor = 1.0;                       // linear, yarn
  int original_max_position_embeddings = 0;  // yarn
  double beta_fast = 32.0, beta_slow = 1.0;  // yarn
  double attention_factor = 0.0;             // yarn; 0 = derived from factor / mscale
  double mscale = 0.0, mscale_all_dim = 0.0; // yarn (DeepSeek style), 0 = unset
  bool truncate = true;                      // yarn
};

struct ModelConfig {
  Family family = Family::Qwen3Moe;
  std::string model_type;  // as written in config.json (the text model's)

  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;     // full attention
  int num_kv_heads = 0;  // full attention (GQA)
  int head_dim = 0;
  double rms_norm_eps = 1e-6;
  int max_position_embeddings = 0;
  bool attention_bias = false;  // q/k/v biases (and o_proj's, except glm4_moe: never)
  bool qk_norm = true;          // per-head q/k RMSNorm (glm4_moe: use_qk_norm)
  bool tie_word_embeddings = false;
  RopeConfig rope;

  // Mixture of experts.
  int num_experts = 0;
  int top_k = 0;                   // num_experts_per_tok
  int moe_intermediate_size = 0;
  bool norm_topk_prob = true;      // renormalise the top-k probabilities to sum to 1
  int intermediate_size = 0;       // dense MLP layers (qwen3_moe)
  int shared_expert_intermediate_size = 0;  // 0 = no shared expert
  bool shared_expert_gate = false;          // shared output *= sigmoid(gate x) (qwen3_5_moe)

  // Sigmoid group-limited router (deepseek_v3 `noaux_tc`, glm4_moe): scores sigmoid(logits),
  // chosen on scores + e_score_correction_bias within the best topk_group of n_group groups.
  int n_group = 1, topk_group = 1;
  double routed_scaling_factor = 1.0;

  // Multi-head latent attention (deepseek_v3): head_dim = qk_nope + qk_rope (the q/k width).
  int q_lora_rank = 0;  // 0: plain q_proj (config null)
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  bool rope_interleave = false;  // checkpoint rope rows interleaved (the package de-interleaves)
  int mtp_layers = 0;            // num_nextn_predict_layers: in the checkpoint, never converted

  // Per layer: attention kind and whether its MLP is a routed MoE block.
  std::vector<LayerKind> layer_kind;
  std::vector<bool> layer_is_moe;

  // Gated DeltaNet (qwen3_5_moe linear-attention layers).
  int linear_conv_kernel = 0;
  int linear_key_head_dim = 0, linear_value_head_dim = 0;
  int linear_num_key_heads = 0, linear_num_value_heads = 0;

  // Derived sizes.
  int rotary_dim() const;
  bool latent_attention() const { return family == Family::DeepseekV3; }
  bool grouped_router() const { return family == Family::DeepseekV3 || family == Family::Glm4Moe; }
  bool o_proj_bias() const { return attention_bias && family != Family::Glm4Moe; }
  // Floats of one position's cache in one attention layer (K and V; MLA: latent + rope key).
  size_t kv_floats_per_token(int layer) const;
  // Bytes one position adds to a sequence's cache over all layers (float32 cache).
  size_t kv_bytes_per_token() const;
  int linear_key_dim() const { return linear_key_head_dim * linear_num_key_heads; }
  int linear_value_dim() const { return linear_value_head_dim * linear_num_value_heads; }
  int linear_conv_dim() const { return 2 * linear_key_dim() + linear_value_dim(); }
  bool gated_attention() const { return family == Family::Qwen3_5Moe; }
  bool zero_centered_norms() const { return family == Family::Qwen3_5Moe; }
  int num_moe_layers() const;

  // Parses a config.json object (a model's own or a VL wrapper's). `source` names the file in
  // error messages. Throws moeflux::Error for an unknown model_type, missing or invalid keys.
  static ModelConfig from_hf_json(const nlohmann::json& j, const std::string& source);

  // The normalised form stored in a package manifest, and its inverse.
  nlohmann::json to_json() const;
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
};

// The part of a checkpoint's tensor names that precedes `layers.N...`, `embed_tokens`, `norm`:
// "model.language_model." for vision-language wrappers, otherwise "model.".
std::string hf_text_prefix(const nlohmann::json& config_json);

}  // namespace moeflux
