// MLX checkpoints as mlx-lm writes them today, built by rewriting the committed 4-bit fixture
// (tests/fixtures/qwen3_moe_mlx4): mixed-bit recipes (per-module entries with "group_size":
// null, several code widths), 6-bit layers (imported by exact re-encoding at 8 bits), and a
// module left unquantized beside quantized siblings.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "backend/cpu/matvec.hpp"
#include "convert/affine_widen.hpp"
#include "core/dtype.hpp"
#include "formats/npy.hpp"
#include "formats/package.hpp"
#include "test_util.hpp"

namespace moeflux::test {
namespace {

using nlohmann::json;

// A safetensors file held in memory: name -> (header entry, bytes).
struct Tensors {
  json metadata;
  std::map<std::string, std::pair<json, std::string>> t;

  static Tensors read(const std::string& path) {
    const std::string raw = read_text(path);
    uint64_t n = 0;
    std::memcpy(&n, raw.data(), 8);
    const json header = json::parse(raw.substr(8, n));
    Tensors out;
    for (const auto& [name, e] : header.items()) {
      if (name == "__metadata__") {
        out.metadata = e;
        continue;
      }
      const uint64_t b = e["data_offsets"][0], end = e["data_offsets"][1];
      out.t[name] = {e, raw.substr(8 + n + b, end - b)};
    }
    return out;
  }
  void write(const std::string& path) const {
    json header;
    if (!metadata.is_null()) header["__metadata__"] = metadata;
    std::string data;
    for (const auto& [name, v] : t) {
      json e = v.first;
      e["data_offsets"] = {data.size(), data.size() + v.second.size()};
      header[name] = e;
      data += v.second;
    }
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');
    const uint64_t n = h.size();
    std::string out(reinterpret_cast<const char*>(&n), 8);
    std::ofstream(path, std::ios::binary) << out << h << data;
  }
};

uint32_t get_code(const std::string& row, size_t j, int bits) {
  uint32_t v = 0;
  for (int b = 0; b < bits; ++b) {
    const size_t bit = j * bits + b;
    v |= ((static_cast<uint8_t>(row[bit / 8]) >> (bit % 8)) & 1u) << b;
  }
  return v;
}
void set_code(std::string& row, size_t j, int bits, uint32_t v) {
  for (int b = 0; b < bits; ++b) {
    const size_t bit = j * bits + b;
    if ((v >> b) & 1u) row[bit / 8] = static_cast<char>(row[bit / 8] | (1 << (bit % 8)));
  }
}

// Re-encodes module `base` (4-bit codes, MLX layout) at `bits` > 4 bits with the same values:
// q' = q << (bits - 4), s' = s / 2^(bits - 4).
void reencode(Tensors& ts, const std::string& base, int bits) {
  auto& w = ts.t.at(base + ".weight");
  auto& s = ts.t.at(base + ".scales");
  std::vector<int64_t> shape = w.first["shape"];
  const size_t words = static_cast<size_t>(shape.back());
  const size_t cols = words * 8;  // 4-bit
  size_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= static_cast<size_t>(shape[i]);
  const size_t out_row = cols * bits / 8;
  std::string data(rows * out_row, '\0');
  for (size_t r = 0; r < rows; ++r) {
    const std::string in = w.second.substr(r * words * 4, words * 4);
    std::string out(out_row, '\0');
    for (size_t j = 0; j < cols; ++j) set_code(out, j, bits, get_code(in, j, 4) << (bits - 4));
    std::memcpy(data.data() + r * out_row, out.data(), out_row);
  }
  w.second = data;
  shape.back() = static_cast<int64_t>(out_row / 4);
  w.first["shape"] = shape;
  for (size_t i = 0; i < s.second.size(); i += 2) {
    uint16_t h;
    std::memcpy(&h, s.second.data() + i, 2);
    h = f32_to_bf16(std::ldexp(bf16_to_f32(h), -(bits - 4)));
    std::memcpy(s.second.data() + i, &h, 2);
  }
}

class MlxImport : public testing::Test {
 protected:
  void SetUp() override {
    src_ = fixture_dir("qwen3_moe_mlx4") + "/hf";
    fs::create_directories(tmp_ / "hf");
    config_ = json::parse(read_text(src_ + "/config.json"));
    tensors_ = Tensors::read(src_ + "/model.safetensors");
  }
  // Writes the (edited) checkpoint, converts it; returns convert's result.
  CommandResult convert(const std::vector<std::string>& extra = {}) {
    std::ofstream(tmp_ / "hf/config.json") << config_.dump(1);
    tensors_.write(tmp_ / "hf/model.safetensors");
    fs::remove_all(tmp_ / "pkg");
    std::vector<std::string> args = {"convert", tmp_ / "hf", tmp_ / "pkg"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_moeflux(args);
  }
  std::vector<double> logits(const std::string& pkg) {
    const CommandResult r =
        run_moeflux({"logits", "-m", pkg, "--tokens", join_ints(fixture_tokens("qwen3_moe_mlx4")),
                     "--out", tmp_ / "l.npy"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return read_npy(tmp_ / "l.npy").values;
  }
  std::vector<double> original_logits() {
    const CommandResult r = run_moeflux({"convert", src_, tmp_ / "orig", "-q"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return logits(tmp_ / "orig");
  }
  void set_quant(const std::string& module, json entry) {
    config_["quantization"][module] = entry;
    config_["quantization_config"][module] = entry;
  }

  TempDir tmp_;
  std::string src_;
  json config_;
  Tensors tensors_;
};

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

// mlx-lm's mixed-bit recipes write an entry per module, with "group_size": null for the default.
TEST_F(MlxImport, PerModuleEntriesWithNullGroupSize) {
  const json block = config_["quantization"];
  for (const auto& [k, v] : block.items())
    if (v.is_object()) set_quant(k, {{"group_size", nullptr}, {"bits", 8}});
  set_quant("model.layers.0.self_attn.q_proj", {{"group_size", nullptr}, {"bits", nullptr}});
  const CommandResult c = convert({"-q"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(logits(tmp_ / "pkg"), original_logits());
}

TEST_F(MlxImport, QuantizationBlockStillChecked) {
  set_quant("model.layers.0.self_attn.q_proj", {{"group_size", 32}, {"bits", 4}});
  expect_clean_failure(convert({"-q"}),
                       "says 4 bits, group 32 for 'model.layers.0.self_attn.q_proj'");
  set_quant("model.layers.0.self_attn.q_proj", {{"group_size", 64}, {"bits", "four"}});
  expect_clean_failure(convert({"-q"}),
                       "'bits' of 'model.layers.0.self_attn.q_proj' is not an integer");
  set_quant("model.layers.0.self_attn.q_proj", false);
  expect_clean_failure(convert({"-q"}), "says 'model.layers.0.self_attn.q_proj' is not quantized");
}

// 6-bit modules (mlx-community publishes 6-bit MoE checkpoints) and a mixed-bit recipe (layer 0's
// experts 6-bit, the others 4-bit): imported by exact re-encoding at 8 bits, with a note.
TEST_F(MlxImport, SixBitLayersImportExactly) {
  for (const char* m :
       {"model.layers.0.mlp.switch_mlp.gate_proj", "model.layers.0.mlp.switch_mlp.up_proj",
        "model.layers.0.mlp.switch_mlp.down_proj", "model.layers.0.self_attn.o_proj"}) {
    reencode(tensors_, m, 6);
    set_quant(m, {{"group_size", 64}, {"bits", 6}});
  }
  const CommandResult c = convert();
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.err.find("note: the checkpoint's expert matrices (affine6g64 and others) are stored "
                       "as affine8g64, re-encoded exactly"),
            std::string::npos)
      << c.err;
  EXPECT_NE(c.err.find("note: 1 resident matrices with 2, 3, 5 or 6-bit codes"), std::string::npos)
      << c.err;
  const Package pkg = Package::open(tmp_ / "pkg");
  EXPECT_EQ(format_name(pkg.manifest().experts.fmt), "affine8g64");
  EXPECT_EQ(format_name(pkg.find("layers.0.self_attn.o_proj.weight")->fmt), "affine8g64");
  // Same values: only the kernels' summation differs between 4- and 8-bit codes.
  EXPECT_LT(max_rel_diff(logits(tmp_ / "pkg"), original_logits()), 1e-5);
}

TEST_F(MlxImport, UnsupportedWidthRefusedNamingTheTensor) {
  auto& w = tensors_.t.at("model.layers.0.self_attn.q_proj.weight");
  w.first["shape"] = {256, 7};  // 7 words for 64 columns: 3.5 bits
  w.second.resize(256 * 7 * 4);
  expect_clean_failure(convert({"-q"}), "model.layers.0.self_attn.q_proj.weight");
}

// A module mlx-lm left unquantized beside quantized siblings: resident ones keep their own
// format; an expert matrix in another format than its siblings is refused naming it (not
// --experts, which the user did not pass), and converts once --experts chooses one format.
TEST_F(MlxImport, ModuleLeftUnquantized) {
  auto to_bf16 = [&](const std::string& base, std::vector<int64_t> shape) {
    const std::string w = tensors_.t.at(base + ".weight").second;
    const std::string s = tensors_.t.at(base + ".scales").second;
    const std::string b = tensors_.t.at(base + ".biases").second;
    const size_t cols = static_cast<size_t>(shape.back());
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    std::string out(n * 2, '\0');
    for (size_t i = 0; i < n; ++i) {
      const size_t row = i / cols, g = row * (cols / 64) + (i % cols) / 64;
      uint16_t sh, bh;
      std::memcpy(&sh, s.data() + 2 * g, 2);
      std::memcpy(&bh, b.data() + 2 * g, 2);
      const float v =
          static_cast<float>(get_code(w.substr(row * cols / 2, cols / 2), i % cols, 4)) *
              bf16_to_f32(sh) +
          bf16_to_f32(bh);
      const uint16_t h = f32_to_bf16(v);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
    tensors_.t.erase(base + ".scales");
    tensors_.t.erase(base + ".biases");
    tensors_.t[base + ".weight"] = {json{{"dtype", "BF16"}, {"shape", shape}}, out};
    set_quant(base, false);
  };
  to_bf16("model.layers.0.self_attn.o_proj", {64, 256});
  ASSERT_EQ(convert({"-q"}).exit_code, 0);
  EXPECT_EQ(format_name(Package::open(tmp_ / "pkg").find("layers.0.self_attn.o_proj.weight")->fmt),
            "bf16");

  to_bf16("model.layers.2.mlp.switch_mlp.down_proj", {16, 64, 64});
  const CommandResult r = convert({"-q"});
  expect_clean_failure(r, "'model.layers.2.mlp.switch_mlp.down_proj.weight' bf16");
  EXPECT_EQ(r.err.find("--experts q4"), std::string::npos) << r.err;
  const CommandResult ok = convert({"-q", "--experts", "bf16"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

// The re-encoding itself, for every width MLX writes, against an independent decode.
TEST(AffineWiden, EveryWidthReencodesExactly) {
  std::mt19937 rng(3);
  const size_t rows = 3, cols = 256;
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int group : {32, 64, 128}) {
      SCOPED_TRACE(std::to_string(bits) + " bits, group " + std::to_string(group));
      const QuantFormat src = QuantFormat::affine(bits, group);
      std::string data(rows * cols * bits / 8, '\0');
      std::vector<uint32_t> codes(rows * cols);
      for (size_t i = 0; i < codes.size(); ++i) {
        codes[i] = rng() & ((1u << bits) - 1);
        std::string row = data.substr((i / cols) * cols * bits / 8, cols * bits / 8);
        set_code(row, i % cols, bits, codes[i]);
        data.replace((i / cols) * cols * bits / 8, row.size(), row);
      }
      const size_t groups = rows * cols / group;
      std::vector<uint16_t> scales(groups), biases(groups);
      for (size_t g = 0; g < groups; ++g) {
        scales[g] = f32_to_bf16(std::ldexp(1.0f + (rng() % 100) / 128.0f, -int(rng() % 10)));
        biases[g] = f32_to_bf16(-0.5f + (rng() % 100) / 100.0f);
      }
      MatrixView v;
      v.fmt = src;
      v.rows = rows;
      v.cols = cols;
      v.data = reinterpret_cast<const uint8_t*>(data.data());
      v.scales = reinterpret_cast<const uint8_t*>(scales.data());
      v.biases = reinterpret_cast<const uint8_t*>(biases.data());
      const QuantFormat dst = bits == 8 ? QuantFormat::affine(8, 32) : widened_format(src);
      ASSERT_TRUE(widens_exactly(src, dst));
      std::vector<uint8_t> out(matrix_layout(dst, rows, cols).total_bytes);
      widen_affine(v, dst, out.data());
      const MatrixView w = MatrixView::from_record(dst, rows, cols, out.data());
      std::vector<float> row(cols);
      for (size_t r = 0; r < rows; ++r) {
        cpu::dequantize_row(w, r, row.data());
        for (size_t c = 0; c < cols; ++c) {
          const size_t g = (r * cols + c) / group;
          const float want = static_cast<float>(codes[r * cols + c]) * bf16_to_f32(scales[g]) +
                             bf16_to_f32(biases[g]);
          ASSERT_EQ(row[c], want) << r << "," << c;
        }
      }
    }
  }
  EXPECT_FALSE(widens_exactly(QuantFormat::affine(6, 64), QuantFormat::affine(4, 64)));
  EXPECT_FALSE(widens_exactly(QuantFormat::affine(4, 32), QuantFormat::affine(8, 64)));
}

}  // namespace
}  // namespace moeflux::test
