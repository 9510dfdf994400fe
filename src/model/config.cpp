#include "model/config.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>

#include "core/error.hpp"
#include "core/json_fields.hpp"

namespace moeflux {

using nlohmann::json;

const char* family_name(Family f) {
  switch (f) {
    case Family::Qwen3Moe:
      return "qwen3_moe";
    case Family::Qwen3_5Moe:
      return "qwen3_5_moe";
    case Family::DeepseekV3:
      return "deepseek_v3";
    case Family::Glm4Moe:
      return "glm4_moe";
  }
  return "?";
}

namespace {

// Other spellings of one attribute that a released transformers writes (a config class's
// `attribute_map`): 5.x's Qwen3MoeConfig maps `num_experts` to `num_local_experts`, so its
// save_pretrained() writes the latter; 4.x and Qwen3.5 write `num_experts`. DeepseekV3Config and
// Glm4MoeConfig map `num_local_experts` to their `n_routed_experts`.
struct Alias {
  const char* key;
  const char* other;
};
constexpr Alias kAliases[] = {{"num_experts", "num_local_experts"},
                              {"n_routed_experts", "num_local_experts"}};

// Typed accessors that name the file and key on error. A key is looked up under each of its
// spellings (kAliases); two spellings with different values are refused.
struct Reader {
  const json& j;
  const std::string& source;

  bool present(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }

  // The spelling of `key` this file uses (`key` itself when it has none).
  const char* spelling(const char* key) const {
    const char* found = nullptr;
    for (const Alias& a : kAliases) {
      if (std::strcmp(a.key, key) != 0) continue;
      if (present(a.key) && present(a.other) && j.at(a.key) != j.at(a.other))
        fail(source + ": keys '" + a.key + "' and '" + a.other + "' disagree (" +
             printable(j.at(a.key).dump()) + " vs " + printable(j.at(a.other).dump()) + ")");
      if (!present(a.key) && present(a.other)) found = a.other;
    }
    return found ? found : key;
  }

  bool has(const char* key) const { return present(spelling(key)); }
  const json& at(const char* key) const { return j.at(spelling(key)); }
  std::string what(const char* key) const { return source + ": key '" + spelling(key) + "'"; }

  int get_int(const char* key) const {
    if (!has(key)) fail(source + ": missing key '" + key + "'");
    return static_cast<int>(json_int(at(key), what(key), 0, int64_t{1} << 30));
  }
  int get_int(const char* key, int dflt) const { return has(key) ? get_int(key) : dflt; }

  double get_double(const char* key, double dflt) const {
    return has(key) ? json_finite(at(key), what(key)) : dflt;
  }
  bool get_bool(const char* key, bool dflt) const {
    if (!has(key)) return dflt;
    if (!at(key).is_boolean()) fail(what(key) + " is not a boolean");
    return at(key).get<bool>();
  }
  std::string get_string(const char* key, const std::string& dflt) const {
    if (!has(key)) return dflt;
    if (!at(key).is_string()) fail(what(key) + " is not a string");
    return at(key).get<std::string>();
  }
};

void require(bool ok, const std::string& source, const std::string& what) {
  if (!ok) fail(source + ": " + what);
}

// Rope settings from either spelling. 5.x: `rope_parameters` {rope_type, rope_theta,
// partial_rotary_factor, ...}, possibly per layer type ({"full_attention": {...}, ...}: the
// full-attention entry applies, the only layers with rope); 4.x: top-level `rope_theta` and
// `partial_rotary_factor`, optional `rope_scaling` {type|rope_type, factor, ...}.
RopeConfig parse_rope(const json& t, const std::string& source, int max_pos,
                      double default_partial) {
  const Reader top{t, source};
  RopeConfig r;
  const json* params = nullptr;
  std::string params_name;
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!top.has(key)) continue;
    params = &t.at(key);
    params_name = key;
    require(params->is_object(), source, "'" + params_name + "' is not an object");
    break;
  }
  if (params && !params->contains("rope_type") && !params->contains("type") &&
      !params->contains("rope_theta") && params->contains("full_attention")) {
    params = &params->at("full_attention");
    params_name += ".full_attention";
    require(params->is_object(), source, "'" + params_name + "' is not an object");
  }
  r.theta = top.get_double("rope_theta", 10000.0);
  r.partial_rotary_factor = top.get_double("partial_rotary_factor", default_partial);
  if (params) {
    const std::string where = source + ": '" + params_name + "'";
    const Reader p{*params, where};
    r.theta = p.get_double("rope_theta", r.theta);
    r.partial_rotary_factor = p.get_double("partial_rotary_factor", r.partial_rotary_factor);
    r.type = p.get_string("rope_type", p.get_string("type", "default"));
    if (r.type == "mrope") r.type = "default";  // text positions: all mrope sections agree
    r.factor = p.get_double("factor", 1.0);
    r.original_max_position_embeddings = p.get_int("original_max_position_embeddings", max_pos);
    if (r.type == "yarn" && !p.has("factor") && r.original_max_position_embeddings > 0)
      r.factor = static_cast<double>(max_pos) / r.original_max_position_embeddings;
    r.beta_fast = p.get_double("beta_fast", 32.0);
    r.beta_slow = p.get_double("beta_slow", 1.0);
    r.attention_factor = p.get_double("attention_factor", 0.0);
    r.mscale = p.get_double("mscale", 0.0);
    r.mscale_all_dim = p.get_double("mscale_all_dim", 0.0);
    r.truncate = p.get_bool("truncate", true);
  }
  if (r.type != "default" && r.type != "linear" && r.type != "yarn")
    fail(source + ": unsupported rope_type '" + printable(r.type) +
         "' (supported: default, linear, yarn)");
  return r;
}

std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

// Values a model cannot run with, refused with the transformers key's name (`names` gives the
// spelling the file used). Both parsers (config.json, package manifest) apply it, so a manifest
// edited by hand cannot bring such a value in either. The bounds are what the arithmetic needs:
// RMSNorm divides by sqrt(mean + eps) (eps > 0, and still > 0 as float), rope raises theta to
// powers in float (0 < theta < FLT_MAX; yarn takes log(theta), so theta > 1), GQA shares each
// kv head among num_heads / num_kv_heads query heads, the router picks top_k of num_experts.
void validate(const ModelConfig& c, const std::string& source,
              const std::function<std::string(const char*)>& names) {
  auto bad = [&](const char* key, const std::string& why) {
    fail(source + ": '" + names(key) + "' " + why);
  };
  auto positive = [&](const char* key, long long v) {
    if (v <= 0) bad(key, "must be positive (found " + std::to_string(v) + ")");
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("num_hidden_layers", c.num_layers);
  positive("num_attention_heads", c.num_heads);
  positive("num_key_value_heads", c.num_kv_heads);
  positive("head_dim", c.head_dim);
  positive("max_position_embeddings", c.max_position_embeddings);
  positive("num_experts", c.num_experts);
  positive("num_experts_per_tok", c.top_k);
  positive("moe_intermediate_size", c.moe_intermediate_size);
  // key's value `a` must be a multiple of other's `b` (b > 0, checked above).
  auto multiple = [&](const char* key, int a, const char* other, int b) {
    if (a % b != 0)
      bad(key, "(" + std::to_string(a) + ") must be a multiple of " + names(other) + " (" +
                   std::to_string(b) + ")");
  };
  multiple("num_attention_heads", c.num_heads, "num_key_value_heads", c.num_kv_heads);
  if (c.top_k > c.num_experts)
    bad("num_experts_per_tok", "(" + std::to_string(c.top_k) + ") exceeds " + names("num_experts") +
                                   " (" + std::to_string(c.num_experts) + ")");
  if (!(c.rms_norm_eps > 0 && c.rms_norm_eps <= 1 && static_cast<float>(c.rms_norm_eps) > 0))
    bad("rms_norm_eps", "must be in (0, 1] (found " + num(c.rms_norm_eps) + ")");
  const RopeConfig& r = c.rope;
  if (!(r.theta > 0 && r.theta <= std::numeric_limits<float>::max()))
    bad("rope_theta", "must be a positive float32 number (found " + num(r.theta) + ")");
  if (r.type == "yarn" && r.theta <= 1)
    bad("rope_theta", "must exceed 1 for yarn (found " + num(r.theta) + ")");
  if (!(r.partial_rotary_factor > 0 && r.partial_rotary_factor <= 1))
    bad("partial_rotary_factor", "must be in (0, 1] (found " + num(r.partial_rotary_factor) + ")");
  if (!c.latent_attention() && (c.rotary_dim() <= 0 || c.rotary_dim() % 2 != 0))
    bad("partial_rotary_factor", "times head_dim must be a positive even number (found " +
                                     std::to_string(c.rotary_dim()) + ")");
  if (r.type != "default" && !(r.factor > 0))
    bad("factor", "(rope) must be positive (found " + num(r.factor) + ")");
  if (r.type == "yarn") {
    positive("original_max_position_embeddings", r.original_max_position_embeddings);
    if (!(r.beta_fast > 0 && r.beta_slow > 0))
      bad("beta_fast", "and beta_slow (yarn) must be positive");
    if (r.attention_factor < 0) bad("attention_factor", "(yarn) must not be negative");
  }
  if (c.num_moe_layers() < c.num_layers && c.intermediate_size <= 0)
    bad("intermediate_size", "must be positive: the model has dense MLP layers");
  if (c.grouped_router()) {
    positive("n_group", c.n_group);
    positive("topk_group", c.topk_group);
    multiple("n_routed_experts", c.num_experts, "n_group", c.n_group);
    if (c.topk_group > c.n_group)
      bad("topk_group", "(" + std::to_string(c.topk_group) + ") exceeds " + names("n_group") +
                            " (" + std::to_string(c.n_group) + ")");
    // A group's score is the sum of its two best experts (transformers' topk(2)).
    if (c.num_experts / c.n_group < 2)
      bad("n_group", "leaves fewer than 2 experts per group (" + std::to_string(c.num_experts) +
                         " experts in " + std::to_string(c.n_group) + " groups)");
    if (c.top_k > c.topk_group * (c.num_experts / c.n_group))
      bad("num_experts_per_tok",
          "(" + std::to_string(c.top_k) + ") exceeds the experts of the kept groups (" +
              names("topk_group") + " x experts per group = " +
              std::to_string(c.topk_group * (c.num_experts / c.n_group)) + ")");
    if (!(c.routed_scaling_factor > 0 && c.routed_scaling_factor <= 1e6))
      bad("routed_scaling_factor",
          "must be in (0, 1e6] (found " + num(c.routed_scaling_factor) + ")");
  }
  if (c.latent_attention()) {
    if (c.attention_bias)
      bad("attention_bias", "is not supported with MLA (no published model has it)");
    positive("kv_lora_rank", c.kv_lora_rank);
    positive("qk_nope_head_dim", c.qk_nope_head_dim);
    positive("v_head_dim", c.v_head_dim);
    if (c.q_lora_rank < 0) bad("q_lora_rank", "must not be negative");
    if (c.qk_rope_head_dim <= 0 || c.qk_rope_head_dim % 2 != 0)
      bad("qk_rope_head_dim",
          "must be a positive even number (found " + std::to_string(c.qk_rope_head_dim) + ")");
  }
  if (c.family == Family::Qwen3_5Moe) {
    positive("linear_conv_kernel_dim", c.linear_conv_kernel);
    positive("linear_key_head_dim", c.linear_key_head_dim);
    positive("linear_value_head_dim", c.linear_value_head_dim);
    positive("linear_num_key_heads", c.linear_num_key_heads);
    positive("linear_num_value_heads", c.linear_num_value_heads);
    multiple("linear_num_value_heads", c.linear_num_value_heads, "linear_num_key_heads",
             c.linear_num_key_heads);
  }
}

std::string same_name(const char* key) {
  return key;
}

// The deepseek_v3 / glm4_moe part of a config.json: the grouped sigmoid router, shared experts,
// dense first layers and (deepseek_v3) the MLA dimensions. A key the file lacks takes the config
// class's default, as transformers does (DeepseekV3Config: the 671B model's values).
void parse_grouped_moe(const Reader& t, const std::string& source, ModelConfig& c) {
  const bool ds = c.family == Family::DeepseekV3;
  c.num_experts = t.get_int("n_routed_experts", ds ? 256 : 128);
  c.top_k = t.get_int("num_experts_per_tok", 8);
  c.moe_intermediate_size = t.get_int("moe_intermediate_size", ds ? 2048 : 1408);
  c.intermediate_size = t.get_int("intermediate_size", ds ? 18432 : 10944);
  c.norm_topk_prob = t.get_bool("norm_topk_prob", true);
  c.routed_scaling_factor = t.get_double("routed_scaling_factor", ds ? 2.5 : 1.0);
  c.n_group = t.get_int("n_group", ds ? 8 : 1);
  c.topk_group = t.get_int("topk_group", ds ? 4 : 1);
  c.shared_expert_intermediate_size = c.moe_intermediate_size * t.get_int("n_shared_experts", 1);
  c.mtp_layers = t.get_int("num_nextn_predict_layers", 0);
  // transformers builds MoE on every layer from first_k_dense_replace on; moe_layer_freq (the
  // original DeepSeek code's "every n-th layer") it ignores, so only 1 has one meaning.
  const int first_dense = t.get_int("first_k_dense_replace", ds ? 3 : 1);
  const int freq = t.get_int("moe_layer_freq", 1);
  require(freq == 1, source,
          "'moe_layer_freq' " + std::to_string(freq) +
              " is not supported (transformers ignores it; every published model uses 1)");
  for (int i = 0; i < c.num_layers; ++i) c.layer_is_moe[i] = i >= first_dense;
  // The reference router is sigmoid + noaux_tc whatever these say: refuse other claims.
  const std::string scoring = t.get_string("scoring_func", "sigmoid");
  require(scoring == "sigmoid", source,
          "'scoring_func' '" + printable(scoring) + "' is not supported (only sigmoid)");
  const std::string method = t.get_string("topk_method", "noaux_tc");
  require(method == "noaux_tc", source,
          "'topk_method' '" + printable(method) + "' is not supported (only noaux_tc)");
  if (!ds) {
    c.qk_norm = t.get_bool("use_qk_norm", false);
    return;
  }
  c.qk_norm = false;
  c.layer_kind.assign(c.num_layers, LayerKind::LatentAttention);
  // q_lora_rank: null = a plain q_proj; absent = the class default.
  c.q_lora_rank = t.j.contains("q_lora_rank") && t.j.at("q_lora_rank").is_null()
                      ? 0
                      : t.get_int("q_lora_rank", 1536);
  c.kv_lora_rank = t.get_int("kv_lora_rank", 512);
  c.qk_nope_head_dim = t.get_int("qk_nope_head_dim", 128);
  c.qk_rope_head_dim = t.get_int("qk_rope_head_dim", 64);
  c.v_head_dim = t.get_int("v_head_dim", 128);
  c.rope_interleave = t.get_bool("rope_interleave", true);
  c.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim;
  c.num_kv_heads = c.num_heads;  // MLA: every head reads the one latent cache
}

}  // namespace

std::string hf_text_prefix(const json& config_json) {
  return config_json.contains("text_config") ? "model.language_model." : "model.";
}

int ModelConfig::rotary_dim() const {
  if (latent_attention()) return qk_rope_head_dim;
  return static_cast<int>(head_dim * rope.partial_rotary_factor);
}

size_t ModelConfig::kv_floats_per_token(int layer) const {
  switch (layer_kind[layer]) {
    case LayerKind::FullAttention:
      return 2 * size_t(num_kv_heads) * head_dim;
    case LayerKind::LatentAttention:
      return size_t(kv_lora_rank) + qk_rope_head_dim;
    case LayerKind::LinearAttention:
      return 0;
  }
  return 0;
}

size_t ModelConfig::kv_bytes_per_token() const {
  size_t n = 0;
  for (int l = 0; l < num_layers; ++l) n += kv_floats_per_token(l);
  return n * sizeof(float);
}

int ModelConfig::num_moe_layers() const {
  return static_cast<int>(std::count(layer_is_moe.begin(), layer_is_moe.end(), true));
}

ModelConfig ModelConfig::from_hf_json(const json& j, const std::string& source) {
  require(j.is_object(), source, "not a JSON object");
  const json* text = &j;
  if (j.contains("text_config")) {
    text = &j.at("text_config");
    require(text->is_object(), source, "'text_config' is not an object");
  }
  const Reader outer{j, source};
  const Reader t{*text, source};
  ModelConfig c;
  c.model_type = t.get_string("model_type", outer.get_string("model_type", ""));
  const std::string outer_type = outer.get_string("model_type", c.model_type);
  if (c.model_type == "qwen3_moe") {
    c.family = Family::Qwen3Moe;
  } else if (c.model_type == "qwen3_5_moe" || c.model_type == "qwen3_5_moe_text") {
    c.family = Family::Qwen3_5Moe;
  } else if (c.model_type == "deepseek_v3" || c.model_type == "kimi_k2") {
    c.family = Family::DeepseekV3;  // Kimi-K2 ships the DeepSeek-V3 forward under its own name
  } else if (c.model_type == "glm4_moe") {
    c.family = Family::Glm4Moe;
  } else if (c.model_type == "qwen3_next" || outer_type == "qwen3_next") {
    fail(source +
         ": model_type 'qwen3_next' is not supported yet (its packed in_proj_qkvz "
         "layout differs from qwen3_5_moe)");
  } else {
    fail(source + ": unsupported model_type '" +
         printable(c.model_type.empty() ? outer_type : c.model_type) +
         "' (supported: qwen3_moe, qwen3_5_moe, qwen3_5_moe_text, deepseek_v3, kimi_k2, "
         "glm4_moe)");
  }

  c.vocab_size = t.get_int("vocab_size");
  c.hidden_size = t.get_int("hidden_size");
  c.num_layers = t.get_int("num_hidden_layers");
  c.num_heads = t.get_int("num_attention_heads");
  c.num_kv_heads = t.get_int("num_key_value_heads", c.num_heads);
  if (c.num_heads <= 0) fail(source + ": 'num_attention_heads' must be positive (found 0)");
  c.head_dim = t.get_int("head_dim", c.hidden_size / c.num_heads);
  c.rms_norm_eps = t.get_double("rms_norm_eps", 1e-6);
  c.max_position_embeddings = t.get_int("max_position_embeddings", 32768);
  c.attention_bias = t.get_bool("attention_bias", false);
  c.tie_word_embeddings =
      t.get_bool("tie_word_embeddings", outer.get_bool("tie_word_embeddings", false));
  // Glm4MoeConfig's partial_rotary_factor defaults to 0.5, the others' to 1.
  c.rope =
      parse_rope(*text, source, c.max_position_embeddings, c.family == Family::Glm4Moe ? 0.5 : 1.0);
  const std::string act = t.get_string("hidden_act", "silu");
  require(act == "silu", source,
          "unsupported hidden_act '" + printable(act) + "' (supported: silu)");

  c.layer_kind.assign(c.num_layers, LayerKind::FullAttention);
  c.layer_is_moe.assign(c.num_layers, true);
  if (c.grouped_router()) {
    parse_grouped_moe(t, source, c);
    validate(c, source, [&](const char* key) {
      return std::string(
          t.spelling(std::strcmp(key, "num_experts") == 0 ? "n_routed_experts" : key));
    });
    return c;
  }
  c.num_experts = t.get_int("num_experts");
  c.top_k = t.get_int("num_experts_per_tok");
  c.moe_intermediate_size = t.get_int("moe_intermediate_size");

  if (c.family == Family::Qwen3Moe) {
    c.norm_topk_prob = t.get_bool("norm_topk_prob", false);
    c.intermediate_size = t.get_int("intermediate_size", 0);
    const int step = t.get_int("decoder_sparse_step", 1);
    // transformers computes (i + 1) % decoder_sparse_step: 0 divides by zero there.
    require(step > 0, source, "'decoder_sparse_step' must be positive (found 0)");
    std::vector<int> mlp_only;
    if (t.has("mlp_only_layers")) {
      const json& m = t.at("mlp_only_layers");
      require(m.is_array(), source, "'mlp_only_layers' is not an array");
      for (const auto& v : m) {
        require(v.is_number_integer(), source, "'mlp_only_layers' holds a non-integer");
        mlp_only.push_back(static_cast<int>(
            json_int(v, source + ": an entry of 'mlp_only_layers'", INT32_MIN, INT32_MAX)));
      }
    }
    for (int i = 0; i < c.num_layers; ++i) {
      const bool dense_listed = std::find(mlp_only.begin(), mlp_only.end(), i) != mlp_only.end();
      c.layer_is_moe[i] = !dense_listed && c.num_experts > 0 && (i + 1) % step == 0;
    }
  } else {
    c.norm_topk_prob = true;  // the qwen3_5_moe router always renormalises its top-k
    c.shared_expert_intermediate_size = t.get_int("shared_expert_intermediate_size");
    c.shared_expert_gate = true;
    c.linear_conv_kernel = t.get_int("linear_conv_kernel_dim");
    c.linear_key_head_dim = t.get_int("linear_key_head_dim");
    c.linear_value_head_dim = t.get_int("linear_value_head_dim");
    c.linear_num_key_heads = t.get_int("linear_num_key_heads");
    c.linear_num_value_heads = t.get_int("linear_num_value_heads");
    if (t.has("layer_types")) {
      const json& lt = t.at("layer_types");
      require(lt.is_array() && static_cast<int>(lt.size()) == c.num_layers, source,
              "'layer_types' must list num_hidden_layers entries");
      for (int i = 0; i < c.num_layers; ++i) {
        const std::string s = lt[i].is_string() ? lt[i].get<std::string>() : "";
        // "attention" and "mamba" are the legacy names transformers still maps to these.
        if (s == "full_attention" || s == "attention")
          c.layer_kind[i] = LayerKind::FullAttention;
        else if (s == "linear_attention" || s == "mamba")
          c.layer_kind[i] = LayerKind::LinearAttention;
        else
          fail(source + ": unknown layer type '" + printable(s) + "' in 'layer_types'");
      }
    } else {
      const int interval = t.get_int("full_attention_interval", 4);
      require(interval > 0, source, "'full_attention_interval' must be positive (found 0)");
      for (int i = 0; i < c.num_layers; ++i)
        c.layer_kind[i] =
            (i + 1) % interval == 0 ? LayerKind::FullAttention : LayerKind::LinearAttention;
    }
  }
  validate(c, source, [&](const char* key) { return std::string(t.spelling(key)); });
  return c;
}

json ModelConfig::to_json() const {
  json r = {{"type", rope.type},
            {"theta", rope.theta},
            {"partial_rotary_factor", rope.partial_rotary_factor},
            {"factor", rope.factor},
            {"original_max_position_embeddings", rope.original_max_position_embeddings},
            {"beta_fast", rope.beta_fast},
            {"beta_slow", rope.beta_slow},
            {"attention_factor", rope.attention_factor},
            {"mscale", rope.mscale},
            {"mscale_all_dim", rope.mscale_all_dim},
            {"truncate", rope.truncate}};
  json kinds = json::array();
  for (auto k : layer_kind)
    kinds.push_back(k == LayerKind::FullAttention     ? "full"
                    : k == LayerKind::LatentAttention ? "mla"
                                                      : "linear");
  return {{"family", family_name(family)},
          {"model_type", model_type},
          {"vocab_size", vocab_size},
          {"hidden_size", hidden_size},
          {"num_layers", num_layers},
          {"num_heads", num_heads},
          {"num_kv_heads", num_kv_heads},
          {"head_dim", head_dim},
          {"rms_norm_eps", rms_norm_eps},
          {"max_position_embeddings", max_position_embeddings},
          {"attention_bias", attention_bias},
          {"tie_word_embeddings", tie_word_embeddings},
          {"rope", r},
          {"num_experts", num_experts},
          {"top_k", top_k},
          {"moe_intermediate_size", moe_intermediate_size},
          {"norm_topk_prob", norm_topk_prob},
          {"intermediate_size", intermediate_size},
          {"shared_expert_intermediate_size", shared_expert_intermediate_size},
          {"layer_kind", kinds},
          {"layer_is_moe", layer_is_moe},
          {"linear_conv_kernel", linear_conv_kernel},
          {"linear_key_head_dim", linear_key_head_dim},
          {"linear_value_head_dim", linear_value_head_dim},
          {"linear_num_key_heads", linear_num_key_heads},
          {"linear_num_value_heads", linear_num_value_heads},
          {"qk_norm", qk_norm},
          {"shared_expert_gate", shared_expert_gate},
          {"n_group", n_group},
          {"topk_group", topk_group},
          {"routed_scaling_factor", routed_scaling_factor},
          {"q_lora_rank", q_lora_rank},
          {"kv_lora_rank", kv_lora_rank},
          {"qk_nope_head_dim", qk_nope_head_dim},
          {"qk_rope_head_dim", qk_rope_head_dim},
          {"v_head_dim", v_head_dim},
          {"rope_interleave", rope_interleave},
          {"mtp_layers", mtp_layers}};
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  try {
    ModelConfig c;
    // Sizes are bounded like from_hf_json's (2^30) so that products of two fit in 64 bits.
    auto count = [&](const json& o, const char* key) {
      return static_cast<int>(
          json_int(o.at(key), source + ": config key '" + key + "'", 0, int64_t{1} << 30));
    };
    auto real = [&](const json& o, const char* key) {
      return json_finite(o.at(key), source + ": config key '" + key + "'");
    };
    const std::string fam = j.at("family").get<std::string>();
    if (fam == "qwen3_moe")
      c.family = Family::Qwen3Moe;
    else if (fam == "qwen3_5_moe")
      c.family = Family::Qwen3_5Moe;
    else if (fam == "deepseek_v3")
      c.family = Family::DeepseekV3;
    else if (fam == "glm4_moe")
      c.family = Family::Glm4Moe;
    else
      fail(source + ": unknown family '" + printable(fam) + "'");
    c.model_type = j.at("model_type").get<std::string>();
    c.vocab_size = count(j, "vocab_size");
    c.hidden_size = count(j, "hidden_size");
    c.num_layers = count(j, "num_layers");
    c.num_heads = count(j, "num_heads");
    c.num_kv_heads = count(j, "num_kv_heads");
    c.head_dim = count(j, "head_dim");
    c.rms_norm_eps = real(j, "rms_norm_eps");
    c.max_position_embeddings = count(j, "max_position_embeddings");
    c.attention_bias = j.at("attention_bias").get<bool>();
    c.tie_word_embeddings = j.at("tie_word_embeddings").get<bool>();
    const json& r = j.at("rope");
    c.rope.type = r.at("type").get<std::string>();
    c.rope.theta = real(r, "theta");
    c.rope.partial_rotary_factor = real(r, "partial_rotary_factor");
    c.rope.factor = real(r, "factor");
    c.rope.original_max_position_embeddings = count(r, "original_max_position_embeddings");
    c.rope.beta_fast = real(r, "beta_fast");
    c.rope.beta_slow = real(r, "beta_slow");
    c.rope.attention_factor = real(r, "attention_factor");
    c.rope.mscale = real(r, "mscale");
    c.rope.mscale_all_dim = real(r, "mscale_all_dim");
    c.rope.truncate = r.at("truncate").get<bool>();
    c.num_experts = count(j, "num_experts");
    c.top_k = count(j, "top_k");
    c.moe_intermediate_size = count(j, "moe_intermediate_size");
    c.norm_topk_prob = j.at("norm_topk_prob").get<bool>();
    c.intermediate_size = count(j, "intermediate_size");
    c.shared_expert_intermediate_size = count(j, "shared_expert_intermediate_size");
    for (const auto& k : j.at("layer_kind")) {
      const std::string s = k.get<std::string>();
      c.layer_kind.push_back(s == "full"  ? LayerKind::FullAttention
                             : s == "mla" ? LayerKind::LatentAttention
                                          : LayerKind::LinearAttention);
    }
    c.layer_is_moe = j.at("layer_is_moe").get<std::vector<bool>>();
    c.linear_conv_kernel = count(j, "linear_conv_kernel");
    c.linear_key_head_dim = count(j, "linear_key_head_dim");
    c.linear_value_head_dim = count(j, "linear_value_head_dim");
    c.linear_num_key_heads = count(j, "linear_num_key_heads");
    c.linear_num_value_heads = count(j, "linear_num_value_heads");
    // Keys added with deepseek_v3 / glm4_moe: packages written before them have their values.
    auto count_or = [&](const char* key, int dflt) {
      return j.contains(key) ? count(j, key) : dflt;
    };
    c.qk_norm = j.value("qk_norm", true);
    c.shared_expert_gate = j.value("shared_expert_gate", c.family == Family::Qwen3_5Moe);
    c.n_group = count_or("n_group", 1);
    c.topk_group = count_or("topk_group", 1);
    c.routed_scaling_factor =
        j.contains("routed_scaling_factor") ? real(j, "routed_scaling_factor") : 1.0;
    c.q_lora_rank = count_or("q_lora_rank", 0);
    c.kv_lora_rank = count_or("kv_lora_rank", 0);
    c.qk_nope_head_dim = count_or("qk_nope_head_dim", 0);
    c.qk_rope_head_dim = count_or("qk_rope_head_dim", 0);
    c.v_head_dim = count_or("v_head_dim", 0);
    c.rope_interleave = j.value("rope_interleave", false);
    c.mtp_layers = count_or("mtp_layers", 0);
    if (static_cast<int>(c.layer_kind.size()) != c.num_layers ||
        static_cast<int>(c.layer_is_moe.size()) != c.num_layers)
      fail(source + ": layer lists do not match num_layers");
    validate(c, source, same_name);
    return c;
  } catch (const json::exception& e) {
    fail(source + ": malformed model config: " + e.what());
  }
}

}  // namespace moeflux
