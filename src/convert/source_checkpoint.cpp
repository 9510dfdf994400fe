#include "convert/source_checkpoint.hpp"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>

#include "convert/affine_widen.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/json_fields.hpp"

namespace moeflux {

using nlohmann::json;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_vision_name(const std::string& n) {
  return n.find("visual") != std::string::npos || n.find("vision") != std::string::npos;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

[[noreturn]] void shape_error(const TensorInfo& t, const std::vector<int64_t>& expected) {
  fail(t.file + ": tensor '" + t.name + "': expected shape " + shape_str(expected) + ", found " +
       shape_str(t.shape));
}

float element_as_float(const TensorInfo& t, size_t i) {
  switch (t.dtype) {
    case DType::F32: {
      float f;
      std::memcpy(&f, t.data + 4 * i, 4);
      return f;
    }
    case DType::BF16: {
      uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      return bf16_to_f32(h);
    }
    case DType::F16: {
      uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      return f16_to_f32(h);
    }
    default:
      fail(t.file + ": tensor '" + t.name + "' has unsupported dtype " + dtype_name(t.dtype) +
           " (supported: BF16, F16, F32)");
  }
}

}  // namespace

SourceCheckpoint SourceCheckpoint::open(const std::string& dir) {
  SourceCheckpoint s;
  s.dir_ = dir;
  const std::string cpath = dir + "/config.json";
  std::ifstream in(cpath);
  if (!in) fail(cpath + ": cannot open (is '" + dir + "' a Hugging Face model directory?)");
  try {
    s.config_json_ = json::parse(in);
  } catch (const json::exception& e) {
    fail(cpath + ": invalid JSON: " + e.what());
  }
  s.config_ = ModelConfig::from_hf_json(s.config_json_, cpath);
  s.ckpt_ = Checkpoint::open(dir);
  s.mlx_ = s.config_json_.contains("quantization");

  // The text prefix: whatever precedes the (non-vision) embed_tokens weight.
  std::vector<std::string> embeds;
  for (const auto& n : s.ckpt_.names())
    if (ends_with(n, "embed_tokens.weight") && !is_vision_name(n)) embeds.push_back(n);
  if (embeds.size() != 1)
    fail(dir + ": expected exactly one embed_tokens.weight tensor, found " +
         std::to_string(embeds.size()));
  s.prefix_ = embeds[0].substr(0, embeds[0].size() - std::string("embed_tokens.weight").size());

  // mlx-lm's sanitize() turns the Gated DeltaNet conv weight from [C, 1, K] into MLX's [C, K, 1]
  // and, in the same step, adds 1 to every zero-centred norm weight. A [C, K, 1] conv weight is
  // therefore the mark of a sanitized checkpoint (the test mlx-lm itself uses).
  if (s.config_.family == Family::Qwen3_5Moe) {
    for (const auto& n : s.ckpt_.names()) {
      if (!ends_with(n, "linear_attn.conv1d.weight")) continue;
      const auto& shape = s.ckpt_.get(n).shape;
      if (shape.size() == 3 && shape[2] == 1 && shape[1] > 1) s.mlx_shifted_norms_ = true;
      break;
    }
  }

  std::vector<std::string> heads;
  for (const auto& n : s.ckpt_.names())
    if (ends_with(n, "lm_head.weight") && !is_vision_name(n)) heads.push_back(n);
  if (heads.size() > 1) fail(dir + ": more than one lm_head.weight tensor");
  if (!heads.empty()) s.lm_head_name_ = heads[0];
  if (!s.config_.tie_word_embeddings && s.lm_head_name_.empty())
    fail(dir + ": lm_head.weight is missing and tie_word_embeddings is false");
  return s;
}

bool SourceCheckpoint::is_zero_centered_norm(const std::string& name) const {
  if (config_.family != Family::Qwen3_5Moe) return false;
  return name == "norm.weight" || ends_with(name, "input_layernorm.weight") ||
         ends_with(name, "post_attention_layernorm.weight") || ends_with(name, "self_attn.q_norm.weight") ||
         ends_with(name, "self_attn.k_norm.weight");
}

std::string SourceCheckpoint::full_name(const std::string& name) const {
  if (name == "lm_head.weight") return lm_head_name_;
  return prefix_ + name;
}

MatrixView SourceCheckpoint::decode_fp8(const TensorInfo& w, size_t total_rows, size_t cols,
                                        size_t row0, size_t rows, std::vector<uint8_t>* out) const {
  const std::string base = w.name.substr(0, w.name.size() - std::string("weight").size());
  const TensorInfo* sc = ckpt_.find(base + "weight_scale_inv");
  if (!sc) fail(w.file + ": FP8 tensor '" + w.name + "' has no '" + base + "weight_scale_inv'");
  if (!out) fail(w.file + ": FP8 tensor '" + w.name + "' cannot be read in place");
  int64_t block_r = 128, block_c = 128;
  if (config_json_.contains("quantization_config") &&
      config_json_.at("quantization_config").is_object()) {
    const json& q = config_json_.at("quantization_config");
    if (q.contains("weight_block_size")) {
      const json& b = q.at("weight_block_size");
      if (!b.is_array() || b.size() != 2)
        fail(dir_ + "/config.json: quantization_config 'weight_block_size' is not [rows, cols]");
      block_r = json_int(b[0], dir_ + "/config.json: weight_block_size", 1, 1 << 20);
      block_c = json_int(b[1], dir_ + "/config.json: weight_block_size", 1, 1 << 20);
    }
  }
  const int64_t R = static_cast<int64_t>(total_rows), C = static_cast<int64_t>(cols);
  const std::vector<int64_t> want = {(R + block_r - 1) / block_r, (C + block_c - 1) / block_c};
  if (sc->shape != want) shape_error(*sc, want);
  if (sc->dtype != DType::F32 && sc->dtype != DType::BF16)
    fail(sc->file + ": tensor '" + sc->name + "' must be F32 or BF16, found " +
         dtype_name(sc->dtype));
  out->resize(rows * cols * 2);
  for (size_t r = 0; r < rows; ++r) {
    const size_t gr = row0 + r;
    const uint8_t* codes = w.data + gr * cols;
    uint8_t* dst = out->data() + r * cols * 2;
    for (size_t c = 0; c < cols; ++c) {
      const float s = element_as_float(*sc, (gr / block_r) * want[1] + c / block_c);
      const uint16_t h = f32_to_bf16(f8e4m3_to_f32(codes[c]) * s);
      std::memcpy(dst + 2 * c, &h, 2);
    }
  }
  return MatrixView::from_record(QuantFormat::bf16(), rows, cols, out->data());
}

MatrixView SourceCheckpoint::view(const std::string& weight_name, const std::string& quant_base,
                                  size_t lead, size_t n_lead, size_t total_rows, size_t cols,
                                  size_t row0, size_t rows, std::vector<uint8_t>* decoded) const {
  const TensorInfo& w = ckpt_.get(weight_name);
  if (w.dtype == DType::F8_E4M3) {
    if (n_lead != 0) fail(w.file + ": stacked FP8 tensor '" + w.name + "' is not supported");
    const std::vector<int64_t> e = {int64_t(total_rows), int64_t(cols)};
    if (w.shape != e) shape_error(w, e);
    return decode_fp8(w, total_rows, cols, row0, rows, decoded);
  }
  const TensorInfo* scales = quant_base.empty() ? nullptr : ckpt_.find(quant_base + ".scales");
  std::vector<int64_t> lead_dims;
  if (n_lead > 0) lead_dims.push_back(static_cast<int64_t>(n_lead));
  auto expect = [&](int64_t last) {
    std::vector<int64_t> e = lead_dims;
    e.push_back(static_cast<int64_t>(total_rows));
    e.push_back(last);
    return e;
  };
  MatrixView v;
  v.rows = rows;
  v.cols = cols;
  if (scales) {
    const TensorInfo& biases = ckpt_.get(quant_base + ".biases");
    if (w.dtype != DType::U32)
      fail(w.file + ": quantized tensor '" + w.name + "' must be U32, found " + dtype_name(w.dtype));
    if (w.shape.size() != lead_dims.size() + 2 || scales->shape.size() != w.shape.size())
      shape_error(w, expect(-1));
    const int64_t packed = w.shape.back(), groups = scales->shape.back();
    if (packed <= 0 || groups <= 0 || (packed * 32) % int64_t(cols) != 0 ||
        int64_t(cols) % groups != 0)
      fail(w.file + ": tensor '" + w.name + "': shape " + shape_str(w.shape) +
           " does not fit " + std::to_string(cols) + " columns");
    const int64_t bits64 = packed * 32 / int64_t(cols);
    const int group = static_cast<int>(int64_t(cols) / groups);
    if (!is_mlx_affine_bits(static_cast<int>(std::min<int64_t>(bits64, 64))) ||
        (group != 32 && group != 64 && group != 128))
      fail(w.file + ": tensor '" + w.name + "': unsupported quantization (" +
           std::to_string(bits64) + " bits, group " + std::to_string(group) +
           "; supported: 2, 3, 4, 5, 6 or 8 bits, group 32/64/128)");
    const int bits = static_cast<int>(bits64);
    // 2, 3, 5 and 6 bits: a source format only; the converter re-encodes it (affine_widen.hpp).
    v.fmt = QuantFormat::affine(bits, group);
    check_quantization_block(quant_base, bits, group);
    if (w.shape != expect(packed)) shape_error(w, expect(packed));
    if (scales->shape != expect(groups)) shape_error(*scales, expect(groups));
    if (biases.shape != expect(groups)) shape_error(biases, expect(groups));
    for (const TensorInfo* t : {scales, &biases})
      if (t->dtype != DType::BF16)
        fail(t->file + ": tensor '" + t->name + "' must be BF16, found " + dtype_name(t->dtype));
    const size_t first_row = lead * total_rows + row0;
    v.data = w.data + first_row * row_data_bytes(v.fmt, cols);
    v.scales = scales->data + first_row * row_scale_bytes(v.fmt, cols);
    v.biases = biases.data + first_row * row_bias_bytes(v.fmt, cols);
    return v;
  }
  switch (w.dtype) {
    case DType::BF16: v.fmt = QuantFormat::bf16(); break;
    case DType::F16: v.fmt = QuantFormat::f16(); break;
    case DType::F32: v.fmt = QuantFormat::f32(); break;
    default:
      fail(w.file + ": tensor '" + w.name + "' has unsupported dtype " + dtype_name(w.dtype) +
           " (supported: BF16, F16, F32, F8_E4M3 with weight_scale_inv, or MLX-quantized U32 "
           "with scales and biases)");
  }
  if (w.shape != expect(static_cast<int64_t>(cols))) shape_error(w, expect(static_cast<int64_t>(cols)));
  v.data = w.data + (lead * total_rows + row0) * row_data_bytes(v.fmt, cols);
  return v;
}

void SourceCheckpoint::check_quantization_block(const std::string& base, int bits, int group) const {
  // MLX's config.json: "quantization": {"group_size": 64, "bits": 4, "<module path>": {...}, ...}
  // where a module entry overrides the default (e.g. an 8-bit router). The shapes decide; the
  // block must agree with them.
  const json* q = nullptr;
  for (const char* key : {"quantization", "quantization_config"})
    if (config_json_.contains(key) && config_json_.at(key).is_object()) {
      q = &config_json_.at(key);
      break;
    }
  if (!q) return;
  const std::string where = dir_ + "/config.json: quantization";
  const json* mode = q->contains("mode") ? &q->at("mode") : nullptr;
  if (mode && !mode->is_null() && (!mode->is_string() || mode->get<std::string>() != "affine"))
    fail(where + " mode " + printable(mode->dump()) + " is not supported (only affine)");
  // A module's entry: an object overriding bits / group_size (mlx-lm's mixed-bit recipes write
  // null for "the default"), or false for a module left unquantized.
  const json* entry = nullptr;
  if (q->contains(base)) {
    const json& e = q->at(base);
    if (e.is_boolean() && !e.get<bool>())
      fail(where + " says '" + base + "' is not quantized, but its tensors hold " +
           std::to_string(bits) + "-bit codes");
    if (e.is_object()) entry = &e;
  }
  // The integer under `key`: the module's, else the block's default; absent or null: none.
  auto setting = [&](const char* key) -> std::optional<int> {
    for (const json* o : {entry, q}) {
      if (!o || !o->contains(key) || o->at(key).is_null()) continue;
      const json& v = o->at(key);
      if (!v.is_number_integer())
        fail(where + " '" + key + "'" + (o == entry ? " of '" + base + "'" : std::string()) +
             " is not an integer");
      return static_cast<int>(json_int(v, where + " '" + key + "'", 0, 1 << 20));
    }
    return std::nullopt;
  };
  const std::optional<int> want_bits = setting("bits"), want_group = setting("group_size");
  // The shapes decide; a block that states something else is a sign of a broken checkpoint.
  if (want_bits.value_or(bits) != bits || want_group.value_or(group) != group)
    fail(where + " says " + std::to_string(want_bits.value_or(bits)) + " bits, group " +
         std::to_string(want_group.value_or(group)) + " for '" + base +
         "', but its tensors hold " + std::to_string(bits) + " bits, group " +
         std::to_string(group));
}

MatrixView SourceCheckpoint::matrix(const std::string& name, size_t rows, size_t cols,
                                    std::vector<uint8_t>* decoded) const {
  const std::string full = full_name(name);
  std::string base = full;
  if (ends_with(base, ".weight")) base.resize(base.size() - 7);
  const bool quantized = ckpt_.find(base + ".scales") != nullptr;
  if (!ckpt_.find(full)) fail(dir_ + ": tensor '" + full + "' not found");
  return view(full, quantized ? base : "", 0, 0, rows, cols, 0, rows, decoded);
}

std::vector<float> SourceCheckpoint::vector(const std::string& name, size_t n) const {
  const TensorInfo& t = ckpt_.get(full_name(name));
  if (t.shape != std::vector<int64_t>{static_cast<int64_t>(n)}) shape_error(t, {int64_t(n)});
  std::vector<float> out(n);
  // mlx-lm stores qwen3_5 zero-centred norm weights as 1 + w (its RMSNorm multiplies by the
  // weight); undo that so the package holds transformers' w.
  const float shift = mlx_shifted_norms_ && is_zero_centered_norm(name) ? 1.0f : 0.0f;
  for (size_t i = 0; i < n; ++i) out[i] = element_as_float(t, i) - shift;
  return out;
}

std::vector<float> SourceCheckpoint::conv_weight(const std::string& name, size_t channels,
                                                 size_t kernel) const {
  const TensorInfo& t = ckpt_.get(full_name(name));
  const int64_t C = channels, K = kernel;
  const bool ok = t.shape == std::vector<int64_t>{C, 1, K} || t.shape == std::vector<int64_t>{C, K, 1} ||
                  t.shape == std::vector<int64_t>{C, K};
  if (!ok) shape_error(t, {C, 1, K});
  std::vector<float> out(channels * kernel);  // all accepted layouts are [C][K] in memory
  for (size_t i = 0; i < out.size(); ++i) out[i] = element_as_float(t, i);
  return out;
}

SourceCheckpoint::ExpertSource SourceCheckpoint::locate_expert(int layer, int e,
                                                              ExpertPartId part) const {
  const ModelConfig& c = config_;
  const size_t H = c.hidden_size, I = c.moe_intermediate_size, E = c.num_experts;
  const std::string mlp = prefix_ + "layers." + std::to_string(layer) + ".mlp.";
  const char* pname = part == ExpertPartId::Gate ? "gate_proj" : part == ExpertPartId::Up ? "up_proj" : "down_proj";
  const size_t rows = part == ExpertPartId::Down ? H : I;
  const size_t cols = part == ExpertPartId::Down ? I : H;

  // Per expert.
  const std::string per = mlp + "experts." + std::to_string(e) + "." + pname;
  if (ckpt_.find(per + ".weight")) {
    const bool q = ckpt_.find(per + ".scales") != nullptr;
    return {per + ".weight", q ? per : "", 0, 0, rows, cols, 0, rows};
  }
  // MLX switch_mlp (stacked, usually quantized).
  const std::string sw = mlp + "switch_mlp." + pname;
  if (ckpt_.find(sw + ".weight")) {
    const bool q = ckpt_.find(sw + ".scales") != nullptr;
    return {sw + ".weight", q ? sw : "", size_t(e), E, rows, cols, 0, rows};
  }
  // transformers 5 stacked: gate_up_proj [E, 2I, H] and down_proj [E, H, I].
  if (part != ExpertPartId::Down && ckpt_.find(mlp + "experts.gate_up_proj")) {
    return {mlp + "experts.gate_up_proj", "", size_t(e), E, 2 * I, H,
            part == ExpertPartId::Gate ? 0 : I, I};
  }
  if (ckpt_.find(mlp + "experts." + pname)) {  // stacked, one tensor per projection
    return {mlp + "experts." + pname, "", size_t(e), E, rows, cols, 0, rows};
  }
  fail(dir_ + ": no weights for expert " + std::to_string(e) + " of layer " + std::to_string(layer) +
       " (looked for " + per + ".weight, " + sw + ".weight and " + mlp + "experts.gate_up_proj)");
}

MatrixView SourceCheckpoint::expert(int layer, int e, ExpertPartId part,
                                    std::vector<uint8_t>* decoded) const {
  const ExpertSource s = locate_expert(layer, e, part);
  return view(s.weight, s.quant_base, s.lead, s.n_lead, s.total_rows, s.cols, s.row0, s.rows,
              decoded);
}

std::string SourceCheckpoint::expert_tensor_name(int layer, ExpertPartId part) const {
  return locate_expert(layer, 0, part).weight;
}

QuantFormat SourceCheckpoint::expert_part_format(int layer, ExpertPartId part) const {
  if (ckpt_.get(locate_expert(layer, 0, part).weight).dtype == DType::F8_E4M3)
    return QuantFormat::bf16();
  return expert(layer, 0, part).fmt;
}

std::vector<std::string> SourceCheckpoint::unused_tensors(const std::vector<std::string>& used) const {
  const std::set<std::string> u(used.begin(), used.end());
  std::vector<std::string> out;
  for (const auto& n : ckpt_.names()) {
    if (n.rfind(prefix_, 0) != 0 || is_vision_name(n)) continue;
    if (n.find(".mlp.experts.") != std::string::npos || n.find(".mlp.switch_mlp.") != std::string::npos)
      continue;
    // The multi-token-prediction layers after the last one (num_nextn_predict_layers): skipped
    // on purpose (the converter notes it).
    const size_t at = n.find("layers.", prefix_.size());
    if (at == prefix_.size() && config_.mtp_layers > 0) {
      const int idx = std::atoi(n.c_str() + at + 7);
      if (idx >= config_.num_layers && idx < config_.num_layers + config_.mtp_layers) continue;
    }
    std::string base = n;
    for (const char* sfx : {".scales", ".biases", ".weight_scale_inv"})
      if (ends_with(base, sfx)) base = base.substr(0, base.size() - std::strlen(sfx)) + ".weight";
    if (!u.count(base)) out.push_back(n);
  }
  return out;
}

}  // namespace moeflux
