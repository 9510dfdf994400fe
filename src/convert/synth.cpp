#include "convert/synth.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <span>

#include "backend/cpu/quantize.hpp"
#include "core/error.hpp"
#include "core/human_bytes.hpp"
#include "core/thread_pool.hpp"
#include "formats/package.hpp"
#include "formats/package_writer.hpp"
#include "model/tensor_specs.hpp"

namespace fs = std::filesystem;

namespace moeflux {

using nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------------
// Presets: the published config.json values (shape-relevant keys and the usual spellings), so
// ModelConfig::from_hf_json reads them exactly as it reads the real checkpoint's file.

// qwen3_5_moe layer pattern: every `interval`-th layer is full attention (layers 3, 7, ...).
json hybrid_layer_types(int n, int interval) {
  json t = json::array();
  for (int i = 0; i < n; ++i)
    t.push_back((i + 1) % interval == 0 ? "full_attention" : "linear_attention");
  return t;
}

// Qwen/Qwen3-30B-A3B config.json (transformers 4.51 spelling). Values as quoted verbatim from
// the published file in public code, e.g. a byte-for-byte copy of
// lmstudio-community/Qwen3-30B-A3B-MLX-4bit/config.json (its MLX quantization keys aside) and
// RND1's "Qwen3-30B-A3B / checkpoint defaults"; the 30B-A3B shape (2048 hidden, 48 layers,
// 128 experts top-8, 768 expert intermediate, 32/4 heads of 128) also matches transformers'
// Qwen3MoeConfig documentation.
json qwen3_30b_a3b() {
  return {{"architectures", {"Qwen3MoeForCausalLM"}},
          {"attention_bias", false},
          {"attention_dropout", 0.0},
          {"bos_token_id", 151643},
          {"decoder_sparse_step", 1},
          {"eos_token_id", 151645},
          {"head_dim", 128},
          {"hidden_act", "silu"},
          {"hidden_size", 2048},
          {"initializer_range", 0.02},
          {"intermediate_size", 6144},
          {"max_position_embeddings", 40960},
          {"max_window_layers", 48},
          {"mlp_only_layers", json::array()},
          {"model_type", "qwen3_moe"},
          {"moe_intermediate_size", 768},
          {"norm_topk_prob", true},
          {"num_attention_heads", 32},
          {"num_experts", 128},
          {"num_experts_per_tok", 8},
          {"num_hidden_layers", 48},
          {"num_key_value_heads", 4},
          {"rms_norm_eps", 1e-6},
          {"rope_scaling", nullptr},
          {"rope_theta", 1000000.0},
          {"sliding_window", nullptr},
          {"tie_word_embeddings", false},
          {"torch_dtype", "bfloat16"},
          {"use_sliding_window", false},
          {"vocab_size", 151936}};
}

// Qwen/Qwen3.6-35B-A3B config.json (Qwen3_5MoeForConditionalGeneration; the vision_config is
// left out, the text model is all we run). text_config as quoted in public code that validates
// the real file (a Qwen3.6-35B-A3B checkpoint contract test: 2048 hidden, 40 layers in a 3:1
// linear:full pattern, 16/2 heads of 256, partial rotary 0.25, mrope [11, 11, 10] with theta
// 1e7, 256 experts top-8 of 512, shared expert 512, DeltaNet 16 key / 32 value heads of 128,
// conv 4, vocab 248320, 262144 positions); the same values appear in a Qwen3.5/3.6-35B-A3B
// config inventory and in THUDM/slime scripts/models/qwen36-35B-A3B.sh (= qwen3.5-35B-A3B.sh).
json qwen3_6_35b_a3b() {
  json text = {{"attention_bias", false},
               {"attention_dropout", 0.0},
               {"attn_output_gate", true},
               {"bos_token_id", 248044},
               {"dtype", "bfloat16"},
               {"eos_token_id", 248044},
               {"full_attention_interval", 4},
               {"head_dim", 256},
               {"hidden_act", "silu"},
               {"hidden_size", 2048},
               {"layer_types", hybrid_layer_types(40, 4)},
               {"linear_conv_kernel_dim", 4},
               {"linear_key_head_dim", 128},
               {"linear_num_key_heads", 16},
               {"linear_num_value_heads", 32},
               {"linear_value_head_dim", 128},
               {"mamba_ssm_dtype", "float32"},
               {"max_position_embeddings", 262144},
               {"model_type", "qwen3_5_moe_text"},
               {"moe_intermediate_size", 512},
               {"mtp_num_hidden_layers", 1},
               {"mtp_use_dedicated_embeddings", false},
               {"num_attention_heads", 16},
               {"num_experts", 256},
               {"num_experts_per_tok", 8},
               {"num_hidden_layers", 40},
               {"num_key_value_heads", 2},
               {"output_router_logits", false},
               {"partial_rotary_factor", 0.25},
               {"rms_norm_eps", 1e-6},
               {"rope_parameters",
                {{"mrope_interleaved", true},
                 {"mrope_section", {11, 11, 10}},
                 {"partial_rotary_factor", 0.25},
                 {"rope_theta", 10000000},
                 {"rope_type", "default"}}},
               {"shared_expert_intermediate_size", 512},
               {"tie_word_embeddings", false},
               {"use_cache", true},
               {"vocab_size", 248320}};
  return {{"architectures", {"Qwen3_5MoeForConditionalGeneration"}},
          {"model_type", "qwen3_5_moe"},
          {"tie_word_embeddings", false},
          {"text_config", text}};
}

// Qwen/Qwen3.5-397B-A17B config.json, text model: 4096 hidden, 60 layers (3:1 linear:full),
// 32/2 heads of 256, 512 experts top-10, expert and shared-expert intermediate 1024, DeltaNet
// 16 key / 64 value heads of 128 (quoted from the published file in public code), conv 4,
// partial rotary 0.25 with theta 1e7, vocab 248320, 262144 positions. Sources: THUDM/slime
// scripts/models/qwen3.5-397B-A17B.sh (Megatron arguments of the same model) and model
// metadata tables that list Qwen/Qwen3.5-397B-A17B; flash-moe (docs/DESIGN.md) runs this
// model with 512 experts, K=10. The mrope section keys are omitted (text positions make all
// sections equal, and this value was not confirmed for this model).
json qwen3_5_397b_a17b() {
  json text = {
      {"attention_bias", false},
      {"attn_output_gate", true},
      {"full_attention_interval", 4},
      {"head_dim", 256},
      {"hidden_act", "silu"},
      {"hidden_size", 4096},
      {"layer_types", hybrid_layer_types(60, 4)},
      {"linear_conv_kernel_dim", 4},
      {"linear_key_head_dim", 128},
      {"linear_num_key_heads", 16},
      {"linear_num_value_heads", 64},
      {"linear_value_head_dim", 128},
      {"max_position_embeddings", 262144},
      {"model_type", "qwen3_5_moe_text"},
      {"moe_intermediate_size", 1024},
      {"num_attention_heads", 32},
      {"num_experts", 512},
      {"num_experts_per_tok", 10},
      {"num_hidden_layers", 60},
      {"num_key_value_heads", 2},
      {"partial_rotary_factor", 0.25},
      {"rms_norm_eps", 1e-6},
      {"rope_parameters",
       {{"partial_rotary_factor", 0.25}, {"rope_theta", 10000000}, {"rope_type", "default"}}},
      {"shared_expert_intermediate_size", 1024},
      {"tie_word_embeddings", false},
      {"vocab_size", 248320}};
  return {{"architectures", {"Qwen3_5MoeForConditionalGeneration"}},
          {"model_type", "qwen3_5_moe"},
          {"tie_word_embeddings", false},
          {"text_config", text}};
}

// Test-only: qwen3_moe at toy width (group-64 formats need hidden and intermediate % 64 == 0);
// layer 1 is a dense MLP layer so the dense path and the empty expert-file entry are covered.
json tiny_qwen3_moe() {
  return {{"model_type", "qwen3_moe"},       {"vocab_size", 512},       {"hidden_size", 64},
          {"intermediate_size", 128},        {"num_hidden_layers", 4},  {"num_attention_heads", 4},
          {"num_key_value_heads", 2},        {"head_dim", 16},          {"rms_norm_eps", 1e-6},
          {"max_position_embeddings", 4096}, {"rope_theta", 1000000.0}, {"attention_bias", false},
          {"tie_word_embeddings", false},    {"num_experts", 8},        {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 64},     {"norm_topk_prob", true},  {"decoder_sparse_step", 1},
          {"mlp_only_layers", {1}}};
}

// deepseek-ai/DeepSeek-V3 config.json (transformers 4.33 spelling; also DeepSeek-R1's and
// Cogito-V2 671B's shape): 7168 hidden, 61 layers with the first 3 dense (18432), MLA with 128
// heads, q_lora 1536, kv_lora 512, nope 128 / rope 64 / v 128, YaRN factor 40 over 4096 with
// mscale 1 / mscale_all_dim 1, 256 experts of 2048 in 8 groups (topk_group 4), top-8, one
// shared expert, routed_scaling_factor 2.5, vocab 129280, one MTP layer. The published weights
// are FP8 (quantization_config omitted here: synth writes bf16 / q8_0 / q4 directly).
json deepseek_v3_671b() {
  return {{"architectures", {"DeepseekV3ForCausalLM"}},
          {"attention_bias", false},
          {"attention_dropout", 0.0},
          {"bos_token_id", 0},
          {"eos_token_id", 1},
          {"first_k_dense_replace", 3},
          {"hidden_act", "silu"},
          {"hidden_size", 7168},
          {"initializer_range", 0.02},
          {"intermediate_size", 18432},
          {"kv_lora_rank", 512},
          {"max_position_embeddings", 163840},
          {"model_type", "deepseek_v3"},
          {"moe_intermediate_size", 2048},
          {"moe_layer_freq", 1},
          {"n_group", 8},
          {"n_routed_experts", 256},
          {"n_shared_experts", 1},
          {"norm_topk_prob", true},
          {"num_attention_heads", 128},
          {"num_experts_per_tok", 8},
          {"num_hidden_layers", 61},
          {"num_key_value_heads", 128},
          {"num_nextn_predict_layers", 1},
          {"q_lora_rank", 1536},
          {"qk_nope_head_dim", 128},
          {"qk_rope_head_dim", 64},
          {"rms_norm_eps", 1e-6},
          {"rope_scaling",
           {{"beta_fast", 32},
            {"beta_slow", 1},
            {"factor", 40},
            {"mscale", 1.0},
            {"mscale_all_dim", 1.0},
            {"original_max_position_embeddings", 4096},
            {"type", "yarn"}}},
          {"rope_theta", 10000},
          {"routed_scaling_factor", 2.5},
          {"scoring_func", "sigmoid"},
          {"tie_word_embeddings", false},
          {"topk_group", 4},
          {"topk_method", "noaux_tc"},
          {"torch_dtype", "bfloat16"},
          {"v_head_dim", 128},
          {"vocab_size", 129280}};
}

// moonshotai/Kimi-K2-Instruct config.json: DeepSeek-V3's forward (model_type kimi_k2) at 1T
// parameters: 64 heads, 384 experts top-8 in one group, first layer dense, routed_scaling_factor
// 2.827, YaRN factor 32 (beta_fast 1, beta_slow 1) over 4096 with theta 50000, 131072
// positions, vocab 163840, no MTP layer (values as quoted from the published file in public
// code).
json kimi_k2() {
  json j = deepseek_v3_671b();
  j["model_type"] = "kimi_k2";
  j["bos_token_id"] = 163584;
  j["eos_token_id"] = 163585;
  j["first_k_dense_replace"] = 1;
  j["max_position_embeddings"] = 131072;
  j["n_group"] = 1;
  j["n_routed_experts"] = 384;
  j["num_attention_heads"] = 64;
  j["num_key_value_heads"] = 64;
  j["num_nextn_predict_layers"] = 0;
  j["rope_scaling"] = {{"beta_fast", 1.0},      {"beta_slow", 1.0},
                       {"factor", 32.0},        {"mscale", 1.0},
                       {"mscale_all_dim", 1.0}, {"original_max_position_embeddings", 4096},
                       {"type", "yarn"}};
  j["rope_theta"] = 50000.0;
  j["routed_scaling_factor"] = 2.827;
  j["topk_group"] = 1;
  j["vocab_size"] = 163840;
  return j;
}

// zai-org/GLM-4.5-Air config.json: 4096 hidden, 46 layers with the first dense (10944), 96 heads
// / 8 kv heads of 128 with attention bias and partial rotary 0.5 (theta 1e6), no q/k norm, 128
// experts of 1408 top-8 in one group, one shared expert, routed_scaling_factor 1, vocab 151552,
// 131072 positions, one MTP layer.
json glm_4_5_air() {
  return {{"architectures", {"Glm4MoeForCausalLM"}},
          {"attention_bias", true},
          {"attention_dropout", 0.0},
          {"first_k_dense_replace", 1},
          {"head_dim", 128},
          {"hidden_act", "silu"},
          {"hidden_size", 4096},
          {"initializer_range", 0.02},
          {"intermediate_size", 10944},
          {"max_position_embeddings", 131072},
          {"model_type", "glm4_moe"},
          {"moe_intermediate_size", 1408},
          {"n_group", 1},
          {"n_routed_experts", 128},
          {"n_shared_experts", 1},
          {"norm_topk_prob", true},
          {"num_attention_heads", 96},
          {"num_experts_per_tok", 8},
          {"num_hidden_layers", 46},
          {"num_key_value_heads", 8},
          {"num_nextn_predict_layers", 1},
          {"partial_rotary_factor", 0.5},
          {"rms_norm_eps", 1e-5},
          {"rope_scaling", nullptr},
          {"rope_theta", 1000000},
          {"routed_scaling_factor", 1.0},
          {"tie_word_embeddings", false},
          {"topk_group", 1},
          {"torch_dtype", "bfloat16"},
          {"use_qk_norm", false},
          {"vocab_size", 151552}};
}

// Test-only: qwen3_5_moe at toy width, 3:1 linear:full, VL wrapper like the published files.
json tiny_qwen3_5_moe() {
  json text = {
      {"model_type", "qwen3_5_moe_text"},
      {"vocab_size", 512},
      {"hidden_size", 64},
      {"num_hidden_layers", 4},
      {"full_attention_interval", 4},
      {"layer_types", hybrid_layer_types(4, 4)},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 2},
      {"head_dim", 32},
      {"partial_rotary_factor", 0.25},
      {"rope_parameters",
       {{"rope_type", "default"}, {"rope_theta", 10000000}, {"partial_rotary_factor", 0.25}}},
      {"rms_norm_eps", 1e-6},
      {"max_position_embeddings", 4096},
      {"attention_bias", false},
      {"tie_word_embeddings", false},
      {"num_experts", 8},
      {"num_experts_per_tok", 2},
      {"moe_intermediate_size", 64},
      {"shared_expert_intermediate_size", 64},
      {"linear_conv_kernel_dim", 4},
      {"linear_key_head_dim", 16},
      {"linear_value_head_dim", 16},
      {"linear_num_key_heads", 2},
      {"linear_num_value_heads", 4}};
  return {{"model_type", "qwen3_5_moe"}, {"tie_word_embeddings", false}, {"text_config", text}};
}

// ---------------------------------------------------------------------------------------------
// Random numbers: splitmix64 streams keyed by a hash of their coordinates.

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The key of sub-stream i of stream `key` (independent for distinct (key, i)).
inline uint64_t subkey(uint64_t key, uint64_t i) {
  return mix64(key ^ mix64(i + kGolden));
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001B3ull;
  return h;
}

// wyrand: one 64x64->128 multiply per 64-bit output (bulk streams); seeded by a subkey.
struct Rng {
  uint64_t state;
  uint64_t next() {
    state += 0xA0761D6478BD642Full;
    const __uint128_t t = static_cast<__uint128_t>(state) * (state ^ 0xE7037ED1A0B428DBull);
    return static_cast<uint64_t>(t >> 64) ^ static_cast<uint64_t>(t);
  }
  float unit() { return static_cast<float>(next() >> 40) * 0x1.0p-24f; }  // [0, 1)
};

// out[i] uniform on [-amp, amp): the stream's 32-bit halves as signed integers, scaled. The
// draws go through `out` as raw bits first, so the conversion loop vectorizes.
void fill_uniform(uint64_t key, float* out, size_t n, float amp) {
  static_assert(sizeof(float) == sizeof(int32_t));
  Rng r{key};
  const size_t pairs = n / 2;
  for (size_t i = 0; i < pairs; ++i) {
    const uint64_t v = r.next();
    std::memcpy(out + 2 * i, &v, sizeof v);  // little-endian: low half first
  }
  if (n % 2) {
    const uint32_t v = static_cast<uint32_t>(r.next());
    std::memcpy(out + n - 1, &v, sizeof v);
  }
  const float k = amp * 0x1.0p-31f;
  for (size_t i = 0; i < n; ++i) {
    int32_t bits;
    std::memcpy(&bits, out + i, sizeof bits);
    out[i] = static_cast<float>(bits) * k;
  }
}

// dst[0, n) = src[0, n) ^ a random stream.
void xor_random(uint8_t* dst, const uint8_t* src, size_t n, uint64_t key) {
  Rng r{key};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, src + i, 8);
    v ^= r.next();
    std::memcpy(dst + i, &v, 8);
  }
  for (uint64_t v = r.next(); i < n; ++i, v >>= 8) dst[i] = src[i] ^ static_cast<uint8_t>(v);
}

// ---------------------------------------------------------------------------------------------
// Random matrices.

// Values per row block: a block is generated from one stream and quantized in one call.
constexpr size_t kBlockValues = size_t{1} << 16;

size_t block_rows(size_t cols) {
  return std::max<size_t>(1, kBlockValues / cols);
}
size_t num_blocks(size_t rows, size_t cols) {
  return (rows + block_rows(cols) - 1) / block_rows(cols);
}

// Reusable per-thread buffers.
struct Scratch {
  std::vector<float> values;
  std::vector<uint8_t> record;
};

// Block b of a random matrix W[rows, cols] (rows [b * block_rows, ...) uniform with standard
// deviation sigma, stream subkey(key, b)) into s.values; returns the block's first row.
size_t random_block_values(size_t rows, size_t cols, float sigma, uint64_t key, size_t b,
                           Scratch& s) {
  const size_t br = block_rows(cols), r0 = b * br, n = std::min(br, rows - r0);
  s.values.resize(n * cols);
  fill_uniform(subkey(key, b), s.values.data(), n * cols, std::sqrt(3.0f) * sigma);
  return r0;
}

// Block b quantized with cpu::quantize_matrix into its rows' places in `rec`, the matrix's
// stored record (matrix_layout(fmt, rows, cols)).
void random_matrix_block(QuantFormat fmt, size_t rows, size_t cols, float sigma, uint64_t key,
                         size_t b, uint8_t* rec, Scratch& s) {
  const size_t r0 = random_block_values(rows, cols, sigma, key, b, s);
  const size_t n = s.values.size() / cols;
  const MatrixLayout full = matrix_layout(fmt, rows, cols);
  const size_t rd = row_data_bytes(fmt, cols), rsc = row_scale_bytes(fmt, cols),
               rbi = row_bias_bytes(fmt, cols);
  if (rsc == 0 && rbi == 0) {  // data only: the block's rows are contiguous in place
    cpu::quantize_matrix(fmt, s.values.data(), n, cols, rec + full.data_offset + r0 * rd);
    return;
  }
  const MatrixLayout part = matrix_layout(fmt, n, cols);
  s.record.resize(part.total_bytes);
  cpu::quantize_matrix(fmt, s.values.data(), n, cols, s.record.data());
  std::memcpy(rec + full.data_offset + r0 * rd, s.record.data() + part.data_offset,
              part.data_bytes);
  if (part.scales_bytes)
    std::memcpy(rec + full.scales_offset + r0 * rsc, s.record.data() + part.scales_offset,
                part.scales_bytes);
  if (part.biases_bytes)
    std::memcpy(rec + full.biases_offset + r0 * rbi, s.record.data() + part.biases_offset,
                part.biases_bytes);
}

// The whole matrix, blocks spread over the pool.
void random_matrix(ThreadPool& pool, QuantFormat fmt, size_t rows, size_t cols, float sigma,
                   uint64_t key, uint8_t* rec) {
  pool.parallel_for(num_blocks(rows, cols), [&](size_t b0, size_t b1) {
    Scratch s;
    for (size_t b = b0; b < b1; ++b) {
      if (PackageWriter::cancel_requested()) return;  // the writer's next call reports it
      random_matrix_block(fmt, rows, cols, sigma, key, b, rec, s);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Resident tensors.

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// The neutral (or documented random) value of a vector tensor.
std::vector<float> synth_vector(const ModelConfig& c, const TensorSpec& spec, uint64_t key) {
  const size_t n = static_cast<size_t>(spec.shape[0]);
  const std::string& name = spec.name;
  if (ends_with(name, "linear_attn.norm.weight")) return std::vector<float>(n, 1.0f);  // plain
  if (ends_with(name, "norm.weight"))  // input/post-attention/final/q/k RMSNorm
    return std::vector<float>(n, c.zero_centered_norms() ? 0.0f : 1.0f);
  if (ends_with(name, ".bias") || ends_with(name, "e_score_correction_bias"))
    return std::vector<float>(n, 0.0f);
  if (ends_with(name, "dt_bias")) return std::vector<float>(n, 1.0f);
  if (ends_with(name, "A_log")) {  // decay rates exp(A_log) in [1, 16)
    Rng r{key};
    std::vector<float> v(n);
    for (float& x : v) x = std::log(1.0f + 15.0f * r.unit());
    return v;
  }
  fail("synth: no initial value is defined for the vector tensor '" + name +
       "' (src/convert/synth.cpp)");
}

// dst = bf16(src) for finite src, round to nearest even: bit-identical to f32_to_bf16 (and so to
// cpu::quantize_matrix's bf16) without its NaN branch, so the loop vectorizes.
void to_bf16_finite(const float* src, size_t n, uint8_t* dst) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, src + i, sizeof b);
    const auto h = static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    std::memcpy(dst + 2 * i, &h, sizeof h);
  }
}

// A random bf16 matrix, streamed: bytes [off, off + len) are whole row blocks (`unit` bytes
// each, but the last), generated on the pool.
void write_random_bf16(PackageWriter& out, ThreadPool& pool, const TensorSpec& spec, float sigma,
                       uint64_t key, const std::function<void(uint64_t)>& on_bytes) {
  const QuantFormat fmt = QuantFormat::bf16();
  const size_t rows = static_cast<size_t>(spec.shape[0]), cols = static_cast<size_t>(spec.shape[1]);
  const size_t unit = block_rows(cols) * row_data_bytes(fmt, cols);
  out.add_resident(spec.name, fmt, spec.shape, unit, [&](uint64_t off, size_t len, uint8_t* dst) {
    const size_t b0 = static_cast<size_t>(off / unit), nb = (len + unit - 1) / unit;
    pool.parallel_for(nb, [&](size_t i0, size_t i1) {
      Scratch s;
      for (size_t i = i0; i < i1; ++i) {
        if (PackageWriter::cancel_requested()) return;  // the writer's next call reports it
        random_block_values(rows, cols, sigma, key, b0 + i, s);
        to_bf16_finite(s.values.data(), s.values.size(), dst + i * unit);
      }
    });
    on_bytes(len);
  });
}

// Writes one resident tensor: matrices in `fmt` (bf16 streamed; a quantized one is built whole
// in memory: at most ~1 GiB, the q8_0 embedding of the largest preset), vectors and conv
// weights f32. The random values do not depend on the format.
void write_resident(PackageWriter& out, ThreadPool& pool, const ModelConfig& c,
                    const TensorSpec& spec, QuantFormat fmt, uint64_t key,
                    const std::function<void(uint64_t)>& on_bytes) {
  if (spec.role == TensorRole::Matrix) {
    const float sigma = spec.name == "embed_tokens.weight"
                            ? 1.0f
                            : 1.0f / std::sqrt(static_cast<float>(spec.shape[1]));
    if (fmt == QuantFormat::bf16()) return write_random_bf16(out, pool, spec, sigma, key, on_bytes);
    const size_t rows = static_cast<size_t>(spec.shape[0]),
                 cols = static_cast<size_t>(spec.shape[1]);
    std::vector<uint8_t> rec(matrix_layout(fmt, rows, cols).total_bytes);
    random_matrix(pool, fmt, rows, cols, sigma, key, rec.data());
    out.add_resident(spec.name, fmt, spec.shape, rec);
    on_bytes(rec.size());
    return;
  }
  std::vector<float> f;
  if (spec.role == TensorRole::Vector) {
    f = synth_vector(c, spec, key);
  } else {  // depthwise conv weight [channels, kernel]
    const size_t k = static_cast<size_t>(spec.shape[1]);
    f.resize(static_cast<size_t>(spec.shape[0]) * k);
    fill_uniform(key, f.data(), f.size(), std::sqrt(3.0f / float(k)));
  }
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(f.data()),
                                       f.size() * sizeof(float));
  out.add_resident(spec.name, QuantFormat::f32(), spec.shape, bytes);
  on_bytes(bytes.size());
}

// ---------------------------------------------------------------------------------------------
// Progress.

class Progress {
 public:
  Progress(bool on, uint64_t total) : on_(on), total_(total), t0_(clock::now()) {}
  double seconds() const { return std::chrono::duration<double>(clock::now() - t0_).count(); }
  void add(uint64_t bytes, const std::string& what, bool force = false) {
    done_ += bytes;
    if (!on_) return;
    const double now = seconds();
    if (!force && now - last_ < 0.25) return;
    last_ = now;
    std::fprintf(stderr, "\r[synth] %-16s %s / %s written  %.0f MB/s   ", what.c_str(),
                 human_bytes(double(done_)).c_str(), human_bytes(double(total_)).c_str(),
                 done_ / 1e6 / std::max(now, 1e-9));
    std::fflush(stderr);
  }

 private:
  using clock = std::chrono::steady_clock;
  bool on_;
  uint64_t total_, done_ = 0;
  clock::time_point t0_;
  double last_ = -1;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

const std::vector<SynthPreset>& synth_presets() {
  static const std::vector<SynthPreset> presets = {
      {"qwen3-30b-a3b", Family::Qwen3Moe,
       "Qwen/Qwen3-30B-A3B: 48 layers, 128 experts top-8, hidden 2048", false, qwen3_30b_a3b()},
      {"qwen3.6-35b-a3b", Family::Qwen3_5Moe,
       "Qwen/Qwen3.6-35B-A3B: 40 hybrid layers, 256 experts top-8 + shared, hidden 2048", false,
       qwen3_6_35b_a3b()},
      {"qwen3.5-397b-a17b", Family::Qwen3_5Moe,
       "Qwen/Qwen3.5-397B-A17B: 60 hybrid layers, 512 experts top-10 + shared, hidden 4096", false,
       qwen3_5_397b_a17b()},
      {"deepseek-v3", Family::DeepseekV3,
       "deepseek-ai/DeepSeek-V3 (R1, Cogito-V2 671B): 61 MLA layers, 256 experts top-8 + shared, "
       "hidden 7168",
       false, deepseek_v3_671b()},
      {"kimi-k2", Family::DeepseekV3,
       "moonshotai/Kimi-K2-Instruct: 61 MLA layers, 384 experts top-8 + shared, hidden 7168", false,
       kimi_k2()},
      {"glm-4.5-air", Family::Glm4Moe,
       "zai-org/GLM-4.5-Air: 46 layers, 128 experts top-8 + shared, hidden 4096", false,
       glm_4_5_air()},
      {"tiny-qwen3-moe", Family::Qwen3Moe, "test-only: qwen3_moe, hidden 64, 4 layers", true,
       tiny_qwen3_moe()},
      {"tiny-qwen3.5-moe", Family::Qwen3_5Moe, "test-only: qwen3_5_moe, hidden 64, 4 layers", true,
       tiny_qwen3_5_moe()},
  };
  return presets;
}

const SynthPreset& find_synth_preset(const std::string& name) {
  std::string known;
  for (const SynthPreset& p : synth_presets()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  fail("--preset: unknown preset '" + name + "' (known: " + known + ")");
}

json synth_config_json(const SynthPreset& p, int layers) {
  json j = p.config;
  json& text = j.contains("text_config") ? j["text_config"] : j;
  const int total = text.at("num_hidden_layers").get<int>();
  if (layers < 0 || layers > total)
    fail("--layers " + std::to_string(layers) + ": preset '" + p.name + "' has " +
         std::to_string(total) + " layers (keep 1 to " + std::to_string(total) + ")");
  if (layers == 0 || layers == total) return j;
  text["num_hidden_layers"] = layers;
  if (text.contains("layer_types")) {
    json kept = json::array();
    for (int i = 0; i < layers; ++i) kept.push_back(text["layer_types"][i]);
    text["layer_types"] = kept;
  }
  if (text.contains("mlp_only_layers")) {
    json kept = json::array();
    for (const json& l : text["mlp_only_layers"])
      if (l.get<int>() < layers) kept.push_back(l);
    text["mlp_only_layers"] = kept;
  }
  if (text.contains("max_window_layers"))
    text["max_window_layers"] = std::min(text["max_window_layers"].get<int>(), layers);
  return j;
}

SynthSummary synthesize_package(const std::string& out_dir, const SynthOptions& opts) {
  // Everything is validated before the partial directory exists.
  const SynthPreset& preset = find_synth_preset(opts.preset);
  if (!opts.family.empty() && opts.family != family_name(preset.family))
    fail("--family " + opts.family + ": preset '" + preset.name + "' is of family " +
         family_name(preset.family));
  json cfg_json = synth_config_json(preset, opts.layers);
  const ModelConfig c = ModelConfig::from_hf_json(cfg_json, "synth preset '" + preset.name + "'");
  const QuantFormat fmt = opts.experts;
  for (size_t cols : {size_t(c.hidden_size), size_t(c.moe_intermediate_size)})
    if (!format_accepts_cols(fmt, cols))
      fail("--experts " + format_name(fmt) + ": expert matrices have " + std::to_string(cols) +
           " columns, which this format cannot hold (needs a multiple of its group size)");
  const bool quantized = fmt.kind == QuantKind::Q8_0 || fmt.kind == QuantKind::Affine;
  const bool templated = quantized && !opts.quantize_each;
  cfg_json["moeflux_synth"] = {{"preset", preset.name},
                               {"layers", c.num_layers},
                               {"seed", opts.seed},
                               {"experts", format_name(fmt)},
                               {"expert_codes", templated ? "template-xor" : "quantized-each"}};

  PackageManifest m;
  m.config = c;
  m.source_config = cfg_json;
  m.source = "synth:" + preset.name;
  m.experts = ExpertLayout::make(fmt, c.hidden_size, c.moe_intermediate_size);
  const std::vector<TensorSpec> specs = resident_tensor_specs(c);

  uint64_t resident_total = 0;
  for (const TensorSpec& s : specs)
    resident_total +=
        s.role == TensorRole::Matrix
            ? matrix_layout(resident_matrix_format(s, QuantFormat::bf16(), opts.resident),
                            s.shape[0], s.shape[1])
                  .total_bytes
            : uint64_t(s.shape[0]) * (s.shape.size() == 2 ? s.shape[1] : 1) * 4;
  const int moe_layers = c.num_moe_layers();
  const uint64_t layer_bytes = uint64_t(c.num_experts) * m.experts.record_bytes;
  Progress progress(opts.progress && !opts.dry_run, resident_total + layer_bytes * moe_layers);
  if (opts.progress || opts.dry_run) {
    std::fprintf(stderr,
                 "[synth] %s (%d of %d layers), experts %s (%s), seed %llu: resident %s + "
                 "experts %d x %s\n",
                 preset.name.c_str(), c.num_layers,
                 (preset.config.contains("text_config") ? preset.config["text_config"]
                                                        : preset.config)["num_hidden_layers"]
                     .get<int>(),
                 format_name(fmt).c_str(), templated ? "template codes" : "quantized each",
                 static_cast<unsigned long long>(opts.seed),
                 human_bytes(double(resident_total)).c_str(), moe_layers,
                 human_bytes(double(layer_bytes)).c_str());
    std::fprintf(stderr, "[synth] parameters: %s\n", describe_parameters(c).c_str());
  }
  if (opts.dry_run) {
    SynthSummary plan;
    plan.resident_bytes = resident_total;
    plan.expert_bytes = layer_bytes * uint64_t(moe_layers);
    plan.moe_layers = moe_layers;
    return plan;
  }

  ThreadPool pool(opts.threads);
  const uint64_t resident_root = subkey(opts.seed, 1);
  const uint64_t expert_root = subkey(opts.seed, 2);
  SynthSummary sum;
  try {
    PackageWriter out(out_dir, opts.force);
    for (const TensorSpec& spec : specs)
      write_resident(out, pool, c, spec,
                     resident_matrix_format(spec, QuantFormat::bf16(), opts.resident),
                     subkey(resident_root, fnv1a(spec.name)),
                     [&](uint64_t n) { progress.add(n, "resident"); });
    sum.resident_bytes = out.resident_bytes();

    const ExpertLayout& el = m.experts;
    const size_t H = c.hidden_size, I = c.moe_intermediate_size;
    struct Part {
      const ExpertPart* part;
      float sigma;  // 1/sqrt(fan-in)
    };
    const Part parts[3] = {{&el.gate, 1.0f / std::sqrt(float(H))},
                           {&el.up, 1.0f / std::sqrt(float(H))},
                           {&el.down, 1.0f / std::sqrt(float(I))}};
    std::vector<uint8_t> tmpl[3];
    int done_layers = 0;
    for (int l = 0; l < c.num_layers; ++l) {
      if (!c.layer_is_moe[l]) continue;
      const uint64_t layer_key = subkey(expert_root, static_cast<uint64_t>(l));
      // Expert e, part p draws from subkey(subkey(layer_key, e), p); the template from
      // subkey(subkey(layer_key, ~0), p).
      if (templated)
        for (int p = 0; p < 3; ++p) {
          const ExpertPart& ep = *parts[p].part;
          tmpl[p].resize(ep.bytes);
          random_matrix(pool, fmt, ep.rows, ep.cols, parts[p].sigma,
                        subkey(subkey(layer_key, ~uint64_t{0}), p), tmpl[p].data());
        }
      const std::string what =
          "layer " + std::to_string(++done_layers) + "/" + std::to_string(moe_layers);
      sum.expert_bytes += out.write_expert_layer(
          l, el, c.num_experts, pool,
          [&](int e, uint8_t* rec) {
            const uint64_t ekey = subkey(layer_key, static_cast<uint64_t>(e));
            for (int p = 0; p < 3; ++p) {
              const ExpertPart& ep = *parts[p].part;
              uint8_t* dst = rec + ep.offset;
              if (!templated) {
                thread_local Scratch s;
                for (size_t b = 0; b < num_blocks(ep.rows, ep.cols); ++b)
                  random_matrix_block(fmt, ep.rows, ep.cols, parts[p].sigma, subkey(ekey, p), b,
                                      dst, s);
                continue;
              }
              // Codes: the template's XOR the expert's stream; scales (biases): the template's.
              const MatrixLayout ml = matrix_layout(fmt, ep.rows, ep.cols);
              uint8_t* codes = dst + ml.data_offset;
              xor_random(codes, tmpl[p].data() + ml.data_offset, ml.data_bytes, subkey(ekey, p));
              std::memcpy(dst + ml.scales_offset, tmpl[p].data() + ml.scales_offset,
                          ml.total_bytes - ml.scales_offset);
              if (fmt.kind == QuantKind::Q8_0)  // keep int8 codes in the quantizer's [-127, 127]
                for (size_t i = 0; i < ml.data_bytes; ++i)
                  codes[i] = codes[i] == 0x80 ? uint8_t{0x81} : codes[i];
            }
          },
          [&](uint64_t n) { progress.add(n, what); });
      ++sum.moe_layers;
    }
    progress.add(0, "fsync + rename", true);
    out.finish(m);
  } catch (const fs::filesystem_error& e) {
    if (opts.progress) std::fprintf(stderr, "\n");
    fail(std::string("synth: ") + e.what());
  } catch (...) {
    if (opts.progress) std::fprintf(stderr, "\n");
    throw;
  }
  sum.seconds = progress.seconds();
  if (opts.progress) {
    progress.add(0, "done", true);
    std::fprintf(stderr, "\n");
  }
  return sum;
}

}  // namespace moeflux
