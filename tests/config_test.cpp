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

}  // namespace
}  // namespace moeflux
