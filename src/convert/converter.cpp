#include "convert/converter.hpp"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "backend/cpu/matvec.hpp"
#include "backend/cpu/quantize.hpp"
#include "convert/source_checkpoint.hpp"
#include "core/error.hpp"
#include "core/human_bytes.hpp"
#include "core/thread_pool.hpp"
#include "formats/package.hpp"
#include "formats/package_writer.hpp"
#include "model/tensor_specs.hpp"

namespace fs = std::filesystem;

namespace moeflux {

namespace {

// Tokenizer and generation files copied verbatim into PKG/tokenizer/ when present.
const char* const kTokenizerFiles[] = {
    "tokenizer.json", "tokenizer_config.json",  "special_tokens_map.json", "vocab.json",
    "merges.txt",     "generation_config.json", "chat_template.jinja",     "chat_template.json"};

// Writes matrix `src` in format `fmt` into `out` (matrix_layout(fmt, rows, cols) bytes):
// a plain copy when the formats agree, else dequantize and quantize row by row.
void write_matrix(const MatrixView& src, QuantFormat fmt, uint8_t* out) {
  const MatrixLayout dl = matrix_layout(fmt, src.rows, src.cols);
  if (src.fmt == fmt) {
    std::memcpy(out + dl.data_offset, src.data, dl.data_bytes);
    if (dl.scales_bytes) std::memcpy(out + dl.scales_offset, src.scales, dl.scales_bytes);
    if (dl.biases_bytes) std::memcpy(out + dl.biases_offset, src.biases, dl.biases_bytes);
    return;
  }
  const MatrixLayout rl = matrix_layout(fmt, 1, src.cols);
  std::vector<float> row(src.cols);
  std::vector<uint8_t> rec(rl.total_bytes);
  for (size_t r = 0; r < src.rows; ++r) {
    cpu::dequantize_row(src, r, row.data());
    cpu::quantize_matrix(fmt, row.data(), 1, src.cols, rec.data());
    std::memcpy(out + dl.data_offset + r * rl.data_bytes, rec.data() + rl.data_offset,
                rl.data_bytes);
    if (rl.scales_bytes)
      std::memcpy(out + dl.scales_offset + r * rl.scales_bytes, rec.data() + rl.scales_offset,
                  rl.scales_bytes);
    if (rl.biases_bytes)
      std::memcpy(out + dl.biases_offset + r * rl.biases_bytes, rec.data() + rl.biases_offset,
                  rl.biases_bytes);
  }
}

// "/data/models/Qwen3-30B-A3B/" -> "Qwen3-30B-A3B".
std::string checkpoint_name(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

class Converter {
 public:
  Converter(const SourceCheckpoint& src, PackageWriter& out, const ConvertOptions& opts)
      : src_(src), out_(out), opts_(opts), pool_(opts.threads) {}

  ConvertSummary run() {
    const auto t0 = std::chrono::steady_clock::now();
    const ModelConfig& c = src_.config();
    PackageManifest m;
    m.config = c;
    m.source_config = src_.config_json();
    // The checkpoint directory's name only: a package shared with others should not carry the
    // converting machine's directory layout.
    m.source = checkpoint_name(src_.dir());

    // Expert format: the checkpoint's unless asked otherwise; one format for all layers.
    int first_moe = -1;
    for (int l = 0; l < c.num_layers && first_moe < 0; ++l)
      if (c.layer_is_moe[l]) first_moe = l;
    if (first_moe < 0) fail(src_.dir() + ": the model has no MoE layers");
    const QuantFormat fmt = opts_.experts_format.value_or(src_.expert_format(first_moe));
    for (size_t cols : {size_t(c.hidden_size), size_t(c.moe_intermediate_size)})
      if (!format_accepts_cols(fmt, cols))
        fail("--experts " + format_name(fmt) + ": expert matrices have " + std::to_string(cols) +
             " columns, which this format cannot hold (needs a multiple of its group size)");
    m.experts = ExpertLayout::make(fmt, c.hidden_size, c.moe_intermediate_size);

    ConvertSummary s;
    s.resident_bytes = write_resident(m);
    for (int l = 0; l < c.num_layers; ++l) {
      if (!c.layer_is_moe[l]) continue;
      s.expert_bytes += write_expert_layer(m.experts, l);
      ++s.moe_layers;
      if (opts_.progress) {
        const double sec =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::fprintf(stderr, "\r[convert] experts: layer %d/%d  %s written  %.0f MB/s   ", l + 1,
                     c.num_layers, human_bytes(double(s.expert_bytes), 1).c_str(),
                     s.expert_bytes / 1e6 / std::max(sec, 1e-9));
        std::fflush(stderr);
      }
    }
    if (opts_.progress) std::fprintf(stderr, "\n");
    copy_tokenizer(m);

    out_.finish(m);  // manifest last, then the rename
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return s;
  }

 private:
  uint64_t write_resident(const PackageManifest& m) {
    std::vector<std::string> used;
    for (const TensorSpec& spec : resident_tensor_specs(m.config)) {
      used.push_back(src_.prefix() + spec.name);
      if (spec.name == "lm_head.weight") used.pop_back();
      QuantFormat fmt;
      std::vector<uint8_t> bytes;
      if (spec.role == TensorRole::Matrix) {
        const MatrixView v = src_.matrix(spec.name, spec.shape[0], spec.shape[1]);
        fmt = resident_matrix_format(spec, v.fmt, opts_.resident_format);
        bytes.resize(matrix_layout(fmt, v.rows, v.cols).total_bytes);
        write_matrix(v, fmt, bytes.data());
      } else {
        const std::vector<float> f =
            spec.role == TensorRole::Vector
                ? src_.vector(spec.name, spec.shape[0])
                : src_.conv_weight(spec.name, spec.shape[0], spec.shape[1]);
        fmt = QuantFormat::f32();
        bytes.resize(f.size() * sizeof(float));
        std::memcpy(bytes.data(), f.data(), bytes.size());
      }
      out_.add_resident(spec.name, fmt, spec.shape, bytes);
    }
    const auto unused = src_.unused_tensors(used);
    if (!unused.empty() && opts_.progress) {
      std::fprintf(stderr, "[convert] warning: %zu checkpoint tensors not used (first: %s)\n",
                   unused.size(), unused.front().c_str());
    }
    return out_.resident_bytes();
  }

  // Records are built in parallel batches and written in order (PackageWriter).
  uint64_t write_expert_layer(const ExpertLayout& el, int layer) {
    return out_.write_expert_layer(
        layer, el, src_.config().num_experts, pool_, [&](int e, uint8_t* rec) {
          write_matrix(src_.expert(layer, e, ExpertPartId::Gate), el.fmt, rec + el.gate.offset);
          write_matrix(src_.expert(layer, e, ExpertPartId::Up), el.fmt, rec + el.up.offset);
          write_matrix(src_.expert(layer, e, ExpertPartId::Down), el.fmt, rec + el.down.offset);
        });
  }

  void copy_tokenizer(PackageManifest& m) {
    for (const char* name : kTokenizerFiles) {
      const fs::path from = fs::path(src_.dir()) / name;
      if (!fs::exists(from)) continue;
      const std::string rel = std::string(kTokenizerDir) + "/" + name;
      out_.copy_file(from.string(), rel);
      m.tokenizer_files.push_back(rel);
    }
  }

  const SourceCheckpoint& src_;
  PackageWriter& out_;
  const ConvertOptions& opts_;
  ThreadPool pool_;
};

}  // namespace

ConvertSummary convert_checkpoint(const std::string& hf_dir, const std::string& out_dir,
                                  const ConvertOptions& opts) {
  const SourceCheckpoint src = SourceCheckpoint::open(hf_dir);
  // The writer refuses an existing out_dir without --force, writes "<out_dir>.partial-<pid>"
  // and removes it on any error (its destructor), so a failed conversion leaves nothing.
  try {
    PackageWriter out(out_dir, opts.force);
    return Converter(src, out, opts).run();
  } catch (const fs::filesystem_error& e) {
    fail(std::string("convert: ") + e.what());
  }
}

}  // namespace moeflux
