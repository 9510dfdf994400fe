#include "model/config.hpp"

#include <gtest/gtest.h>

#include "core/error.hpp"

namespace moeflux {
namespace {

using nlohmann::json;

json qwen3_moe_base() {
  return {{"model_type", "qwen3_moe"},       {"vocab_size", 256},          {"hidden_size", 64},
          {"num_hidden_layers", 4},          {"num_attention_heads", 4},   {"num_key_value_heads", 2},
          {"head_dim", 16},                  {"num_experts", 8},           {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 64},     {"intermediate_size", 128},   {"rope_theta", 1e6},
          {"max_position_embeddings", 4096}, {"rms_norm_eps", 1e-6}};
}

json qwen3_5_text_base() {
  return {{"model_type", "qwen3_5_moe_text"},
          {"vocab_size", 256},
          {"hidden_size", 64},
          {"num_hidden_layers", 8},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"head_dim", 32},
          {"num_experts", 8},
          {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 64},
          {"shared_expert_intermediate_size", 64},
          {"linear_conv_kernel_dim", 4},
          {"linear_key_head_dim", 16},
          {"linear_value_head_dim", 16},
          {"linear_num_key_heads", 2},
          {"linear_num_value_heads", 4},
          {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e7}, {"partial_rotary_factor", 0.25}}}};
}

TEST(Config, Qwen3MoeTransformers4Spelling) {
  json j = qwen3_moe_base();
  j["mlp_only_layers"] = {1};
  j["decoder_sparse_step"] = 1;
  const ModelConfig c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_EQ(c.family, Family::Qwen3Moe);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{true, false, true, true}));
  EXPECT_FALSE(c.norm_topk_prob);  // transformers' default for qwen3_moe
  EXPECT_EQ(c.rotary_dim(), 16);
}

TEST(Config, Qwen3MoeSparseStepAndYarn) {
  json j = qwen3_moe_base();
  j.erase("rope_theta");
  j["decoder_sparse_step"] = 2;
  j["norm_topk_prob"] = true;
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 5e5}, {"factor", 4.0},
                          {"original_max_position_embeddings", 1024}};
  const ModelConfig c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{false, true, false, true}));
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 1024);
  EXPECT_DOUBLE_EQ(c.rope.theta, 5e5);
  EXPECT_TRUE(c.norm_topk_prob);
}

TEST(Config, LegacyRopeScaling) {
  json j = qwen3_moe_base();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const ModelConfig c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope.factor, 2.0);
}

TEST(Config, Qwen3_5LayerTypesFromInterval) {
  json j = qwen3_5_text_base();
  j["full_attention_interval"] = 4;
  const ModelConfig c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_EQ(c.family, Family::Qwen3_5Moe);
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(c.layer_kind[i], (i % 4 == 3) ? LayerKind::FullAttention : LayerKind::LinearAttention);
  EXPECT_EQ(c.rotary_dim(), 8);
  EXPECT_EQ(c.linear_conv_dim(), 2 * 32 + 64);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.num_moe_layers(), 8);
}

TEST(Config, VisionLanguageWrapper) {
  json text = qwen3_5_text_base();
  text["layer_types"] = {"linear_attention", "full_attention", "linear_attention", "full_attention",
                         "linear_attention", "linear_attention", "linear_attention", "full_attention"};
  json j = {{"model_type", "qwen3_5_moe"}, {"text_config", text}, {"vision_config", {{"depth", 2}}},
            {"tie_word_embeddings", false}};
  const ModelConfig c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_EQ(c.model_type, "qwen3_5_moe_text");
  EXPECT_EQ(c.layer_kind[1], LayerKind::FullAttention);
  EXPECT_EQ(c.layer_kind[4], LayerKind::LinearAttention);
  EXPECT_EQ(hf_text_prefix(j), "model.language_model.");
  EXPECT_EQ(hf_text_prefix(text), "model.");
}

TEST(Config, RoundTripThroughManifestJson) {
  json j = qwen3_5_text_base();
  const ModelConfig a = ModelConfig::from_hf_json(j, "config.json");
  const ModelConfig b = ModelConfig::from_json(a.to_json(), "manifest.json");
  EXPECT_EQ(a.to_json(), b.to_json());
}

void expect_error(const json& j, const std::string& needle) {
  try {
    ModelConfig::from_hf_json(j, "some/config.json");
    FAIL() << "no error for " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("some/config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Config, ClearErrors) {
  json j = qwen3_moe_base();
  j["model_type"] = "llama";
  expect_error(j, "unsupported model_type 'llama'");
  j = qwen3_moe_base();
  j.erase("hidden_size");
  expect_error(j, "missing key 'hidden_size'");
  j = qwen3_moe_base();
  j["num_experts_per_tok"] = "two";
  expect_error(j, "'num_experts_per_tok' is not an integer");
  j = qwen3_moe_base();
  j["num_experts_per_tok"] = 9;
  expect_error(j, "num_experts_per_tok");
  j = qwen3_moe_base();
  j["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 2.0}};
  expect_error(j, "unsupported rope_type 'longrope'");
  j = qwen3_moe_base();
  j["hidden_act"] = "gelu";
  expect_error(j, "hidden_act");
  j = qwen3_moe_base();
  j["model_type"] = "qwen3_next";
  expect_error(j, "qwen3_next");
  j = qwen3_5_text_base();
  j["layer_types"] = {"linear_attention"};
  expect_error(j, "layer_types");
}

// DeepSeek-V3 as its published config.json spells it (transformers 4.x: rope_scaling yarn).
json deepseek_v3_base() {
  return {{"model_type", "deepseek_v3"},
          {"vocab_size", 256},
          {"hidden_size", 64},
          {"intermediate_size", 128},
          {"moe_intermediate_size", 64},
          {"num_hidden_layers", 5},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 4},
          {"n_shared_experts", 2},
          {"n_routed_experts", 16},
          {"routed_scaling_factor", 2.5},
          {"kv_lora_rank", 32},
          {"q_lora_rank", 48},
          {"qk_rope_head_dim", 8},
          {"v_head_dim", 16},
          {"qk_nope_head_dim", 24},
          {"topk_method", "noaux_tc"},
          {"n_group", 4},
          {"topk_group", 2},
          {"num_experts_per_tok", 4},
          {"moe_layer_freq", 1},
          {"first_k_dense_replace", 2},
          {"norm_topk_prob", true},
          {"scoring_func", "sigmoid"},
          {"max_position_embeddings", 4096},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000},
          {"num_nextn_predict_layers", 1},
          {"rope_scaling",
           {{"type", "yarn"},
            {"factor", 40},
            {"original_max_position_embeddings", 4096},
            {"beta_fast", 32},
            {"beta_slow", 1},
            {"mscale", 1.0},
            {"mscale_all_dim", 1.0}}}};
}

json glm4_moe_base() {
  return {
      {"model_type", "glm4_moe"},        {"vocab_size", 256},           {"hidden_size", 64},
      {"intermediate_size", 128},        {"moe_intermediate_size", 64}, {"num_hidden_layers", 3},
      {"num_attention_heads", 4},        {"num_key_value_heads", 2},    {"head_dim", 32},
      {"n_routed_experts", 8},           {"n_shared_experts", 1},       {"num_experts_per_tok", 2},
      {"first_k_dense_replace", 1},      {"attention_bias", true},      {"rope_theta", 1e6},
      {"max_position_embeddings", 4096}, {"rms_norm_eps", 1e-5}};
}

TEST(Config, DeepseekV3PublishedSpelling) {
  const ModelConfig c = ModelConfig::from_hf_json(deepseek_v3_base(), "config.json");
  EXPECT_EQ(c.family, Family::DeepseekV3);
  EXPECT_EQ(c.num_experts, 16);
  EXPECT_EQ(c.shared_expert_intermediate_size, 128);  // 2 shared experts of 64, fused
  EXPECT_FALSE(c.shared_expert_gate);
  EXPECT_EQ(c.n_group, 4);
  EXPECT_EQ(c.topk_group, 2);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.q_lora_rank, 48);
  EXPECT_EQ(c.head_dim, 32);  // nope + rope
  EXPECT_EQ(c.rotary_dim(), 8);
  EXPECT_TRUE(c.rope_interleave);  // DeepseekV3Config's default
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope.mscale_all_dim, 1.0);
  EXPECT_EQ(c.mtp_layers, 1);
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{false, false, true, true, true}));
  for (LayerKind k : c.layer_kind) EXPECT_EQ(k, LayerKind::LatentAttention);
  EXPECT_EQ(c.kv_floats_per_token(0), 40u);  // latent 32 + rope key 8
  const ModelConfig b = ModelConfig::from_json(c.to_json(), "manifest.json");
  EXPECT_EQ(c.to_json(), b.to_json());
}

TEST(Config, DeepseekV3Transformers5AndKimiK2) {
  json j = deepseek_v3_base();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j.erase("n_routed_experts");
  j["num_local_experts"] = 16;  // the attribute-map spelling
  j["q_lora_rank"] = nullptr;   // a plain q_proj
  j["rope_interleave"] = false;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 5e4}};
  j["head_dim"] = 8;  // 5.x writes qk_rope_head_dim here; MLA's q/k width is nope + rope
  ModelConfig c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_EQ(c.num_experts, 16);
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_FALSE(c.rope_interleave);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_DOUBLE_EQ(c.rope.theta, 5e4);
  j["model_type"] = "kimi_k2";
  c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_EQ(c.family, Family::DeepseekV3);
  EXPECT_EQ(c.model_type, "kimi_k2");
}

TEST(Config, Glm4MoeSpellings) {
  ModelConfig c = ModelConfig::from_hf_json(glm4_moe_base(), "config.json");
  EXPECT_EQ(c.family, Family::Glm4Moe);
  EXPECT_EQ(c.rotary_dim(), 16);  // Glm4MoeConfig's partial_rotary_factor default: 0.5
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias());
  EXPECT_EQ(c.n_group, 1);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 1.0);
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{false, true, true}));
  json j = glm4_moe_base();
  j.erase("rope_theta");
  j["rope_parameters"] = {
      {"rope_type", "default"}, {"rope_theta", 1e6}, {"partial_rotary_factor", 0.25}};
  j["use_qk_norm"] = true;
  c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_EQ(c.rotary_dim(), 8);
  EXPECT_TRUE(c.qk_norm);
  const ModelConfig b = ModelConfig::from_json(c.to_json(), "manifest.json");
  EXPECT_EQ(c.to_json(), b.to_json());
}

TEST(Config, GroupedRouterAndMlaValuesRefusedByKey) {
  struct Case {
    const char* key;
    json value;
    const char* needle;
  };
  const Case cases[] = {
      {"moe_layer_freq", 2, "'moe_layer_freq' 2 is not supported"},
      {"n_group", 3, "'n_routed_experts' (16) must be a multiple of n_group (3)"},
      {"n_group", 16, "'n_group' leaves fewer than 2 experts per group"},
      {"n_group", 0, "'n_group' must be positive"},
      {"topk_group", 5, "'topk_group' (5) exceeds n_group (4)"},
      {"num_experts_per_tok", 9,
       "'num_experts_per_tok' (9) exceeds the experts of the kept groups"},
      {"routed_scaling_factor", 0, "'routed_scaling_factor' must be in (0, 1e6]"},
      {"scoring_func", "softmax", "'scoring_func' 'softmax' is not supported"},
      {"topk_method", "greedy", "'topk_method' 'greedy' is not supported"},
      {"kv_lora_rank", 0, "'kv_lora_rank' must be positive"},
      {"qk_rope_head_dim", 7, "'qk_rope_head_dim' must be a positive even number"},
      {"v_head_dim", 0, "'v_head_dim' must be positive"},
      {"attention_bias", true, "'attention_bias' is not supported with MLA"},
  };
  for (const Case& c : cases) {
    json j = deepseek_v3_base();
    j[c.key] = c.value;
    expect_error(j, c.needle);
  }
  json j = deepseek_v3_base();
  j.erase("n_routed_experts");
  j["num_local_experts"] = 8;
  j["n_group"] = 3;
  expect_error(j, "'num_local_experts' (8) must be a multiple of n_group (3)");
}

// What transformers 5.x's save_pretrained() writes for a Qwen3MoeConfig: the attribute_map
// spelling `num_local_experts`, `rope_parameters`, `dtype`, and the always-written defaults.
TEST(Config, Qwen3MoeTransformers5SavePretrainedSpelling) {
  json j = qwen3_moe_base();
  j.erase("num_experts");
  j.erase("rope_theta");
  j["num_local_experts"] = 8;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  j["dtype"] = "bfloat16";
  j["mlp_only_layers"] = json::array();
  j["sliding_window"] = nullptr;
  j["use_sliding_window"] = false;
  j["architectures"] = {"Qwen3MoeForCausalLM"};
  j["transformers_version"] = "5.0.0";
  const ModelConfig c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.num_moe_layers(), 4);
  // Both spellings: fine when they agree, refused when they do not.
  j["num_experts"] = 8;
  EXPECT_EQ(ModelConfig::from_hf_json(j, "config.json").num_experts, 8);
  j["num_experts"] = 16;
  expect_error(j, "keys 'num_experts' and 'num_local_experts' disagree");
  // The alias is the spelling named in errors.
  j.erase("num_experts");
  j["num_experts_per_tok"] = 9;
  expect_error(j, "'num_experts_per_tok' (9) exceeds num_local_experts (8)");
}

TEST(Config, Qwen3_5Transformers5Spelling) {
  json text = qwen3_5_text_base();
  text["layer_types"] = {"linear_attention", "linear_attention", "linear_attention", "full_attention",
                         "mamba",            "mamba",            "mamba",            "attention"};
  text["dtype"] = "bfloat16";
  // Per-layer-type rope parameters: the full-attention layers' entry applies.
  text["rope_parameters"] = {
      {"full_attention", {{"rope_type", "default"}, {"rope_theta", 5e6}, {"partial_rotary_factor", 0.5}}}};
  json j = {{"model_type", "qwen3_5_moe"}, {"text_config", text}, {"dtype", "bfloat16"}};
  const ModelConfig c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_DOUBLE_EQ(c.rope.theta, 5e6);
  EXPECT_EQ(c.rotary_dim(), 16);
  EXPECT_EQ(c.layer_kind[3], LayerKind::FullAttention);
  EXPECT_EQ(c.layer_kind[4], LayerKind::LinearAttention);
  EXPECT_EQ(c.layer_kind[7], LayerKind::FullAttention);
}

TEST(Config, TorchDtypeAndNullsOf4x) {
  json j = qwen3_moe_base();
  j["torch_dtype"] = "bfloat16";
  j["rope_scaling"] = nullptr;
  j["head_dim"] = nullptr;  // falls back to hidden_size / num_attention_heads
  j["mlp_only_layers"] = nullptr;
  const ModelConfig c = ModelConfig::from_hf_json(j, "config.json");
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope.type, "default");
}

// Values a model cannot run with are refused at load, naming the key.
TEST(Config, NonsenseValuesRefused) {
  struct Case {
    const char* key;
    json value;
    const char* needle;
  };
  const Case moe_cases[] = {
      {"rope_theta", 0, "'rope_theta' must be a positive float32 number (found 0)"},
      {"rope_theta", -5.0, "'rope_theta' must be a positive"},
      {"rope_theta", 1e39, "'rope_theta' must be a positive float32 number"},
      {"rope_theta", {{"__float__", "NaN"}}, "key 'rope_theta' is not finite"},
      {"rope_theta", "1e6", "key 'rope_theta' is not a number"},
      {"rms_norm_eps", -1, "'rms_norm_eps' must be in (0, 1] (found -1)"},
      {"rms_norm_eps", 0, "'rms_norm_eps' must be in (0, 1]"},
      {"rms_norm_eps", 1e-60, "'rms_norm_eps' must be in (0, 1]"},
      {"rms_norm_eps", {{"__float__", "Infinity"}}, "key 'rms_norm_eps' is not finite"},
      {"num_attention_heads", 0, "'num_attention_heads' must be positive"},
      {"num_key_value_heads", 0, "'num_key_value_heads' must be positive"},
      {"num_key_value_heads", 3, "'num_attention_heads' (4) must be a multiple of num_key_value_heads (3)"},
      {"hidden_size", -64, "key 'hidden_size' is -64, below the minimum 0"},
      {"vocab_size", 0, "'vocab_size' must be positive"},
      {"head_dim", 0, "'head_dim' must be positive"},
      {"head_dim", 15, "times head_dim must be a positive even number"},
      {"num_experts", 0, "'num_experts' must be positive"},
      {"num_experts_per_tok", 0, "'num_experts_per_tok' must be positive"},
      {"moe_intermediate_size", 0, "'moe_intermediate_size' must be positive"},
      {"max_position_embeddings", 0, "'max_position_embeddings' must be positive"},
      {"decoder_sparse_step", 0, "'decoder_sparse_step' must be positive"},
      {"partial_rotary_factor", 1.5, "'partial_rotary_factor' must be in (0, 1]"},
      {"num_hidden_layers", 1e300, "key 'num_hidden_layers' is not an integer"},
  };
  for (const Case& k : moe_cases) {
    json j = qwen3_moe_base();
    j[k.key] = k.value;
    expect_error(j, k.needle);
  }
  json j = qwen3_moe_base();
  j["mlp_only_layers"] = {1};
  j.erase("intermediate_size");
  expect_error(j, "'intermediate_size' must be positive: the model has dense MLP layers");
  j = qwen3_moe_base();
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1.0}, {"factor", 4.0}};
  expect_error(j, "'rope_theta' must exceed 1 for yarn");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e4}, {"factor", -4.0}};
  expect_error(j, "'factor' (rope) must be positive");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e4}, {"factor", "x"}};
  expect_error(j, "'rope_parameters': key 'factor' is not a number");

  const Case linear_cases[] = {
      {"linear_num_key_heads", 0, "'linear_num_key_heads' must be positive"},
      {"linear_num_key_heads", 3, "'linear_num_value_heads' (4) must be a multiple of linear_num_key_heads (3)"},
      {"linear_conv_kernel_dim", 0, "'linear_conv_kernel_dim' must be positive"},
      {"linear_key_head_dim", 0, "'linear_key_head_dim' must be positive"},
      {"full_attention_interval", 0, "'full_attention_interval' must be positive"},
  };
  for (const Case& k : linear_cases) {
    json t = qwen3_5_text_base();
    t[k.key] = k.value;
    expect_error(t, k.needle);
  }
}

// A package manifest's config goes through the same checks (a hand-edited manifest cannot bring
// a value the converter would have refused).
TEST(Config, ManifestConfigValidated) {
  const json good = ModelConfig::from_hf_json(qwen3_moe_base(), "config.json").to_json();
  auto expect_manifest_error = [](const json& m, const std::string& needle) {
    try {
      ModelConfig::from_json(m, "pkg/manifest.json");
      FAIL() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  json m = good;
  m["rope"]["theta"] = 0.0;
  expect_manifest_error(m, "'rope_theta' must be a positive");
  m = good;
  m["rms_norm_eps"] = -1.0;
  expect_manifest_error(m, "'rms_norm_eps' must be in (0, 1]");
  m = good;
  m["top_k"] = 9;
  expect_manifest_error(m, "exceeds num_experts");
}

}  // namespace
}  // namespace moeflux
