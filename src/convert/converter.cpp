#include "convert/converter.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "backend/cpu/matvec.hpp"
#include "backend/cpu/quantize.hpp"
#include "convert/affine_widen.hpp"
#include "convert/derive.hpp"
#include "convert/source_checkpoint.hpp"
#include "core/error.hpp"
#include "core/human_bytes.hpp"
#include "core/thread_pool.hpp"
#include "formats/package.hpp"
#include "formats/package_writer.hpp"
#include "model/tensor_specs.hpp"
#include "text/chat_template.hpp"

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
  if (src.fmt != fmt && widens_exactly(src.fmt, fmt)) return widen_affine(src, fmt, out);
  if (src.fmt.kind == QuantKind::Affine && src.fmt.bits != 4 && src.fmt.bits != 8) {
    // MLX 2/3/5/6-bit codes: re-encoded exactly at 4/8 bits first (what dequantize_row reads).
    const QuantFormat w = widened_format(src.fmt);
    std::vector<uint8_t> tmp(matrix_layout(w, src.rows, src.cols).total_bytes);
    widen_affine(src, w, tmp.data());
    return write_matrix(MatrixView::from_record(w, src.rows, src.cols, tmp.data()), fmt, out);
  }
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

    m.experts = ExpertLayout::make(expert_format(), c.hidden_size, c.moe_intermediate_size);

    if (c.mtp_layers > 0)
      note("the checkpoint's " + std::to_string(c.mtp_layers) +
           " multi-token-prediction layer(s) (num_nextn_predict_layers) are not converted: "
           "they only serve speculative decoding, which moeflux does not do");
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
  void note(const std::string& what) const {
    if (opts_.progress) std::fprintf(stderr, "[convert] note: %s\n", what.c_str());
  }

  // One format for every routed expert of every layer: --experts, else the checkpoint's. MLX
  // checkpoints may mix widths across layers (mixed-bit recipes) or use widths the package does
  // not store (2, 3, 5, 6 bits): those become the narrowest of 4 / 8 bits that holds them all,
  // with the smallest group, re-encoded exactly (affine_widen.hpp). A matrix whose width the
  // format cannot hold is refused, naming its tensor.
  QuantFormat expert_format() const {
    const ModelConfig& c = src_.config();
    struct Part {
      int layer;
      ExpertPartId id;
      size_t cols;
      QuantFormat fmt;
    };
    std::vector<Part> parts;
    for (int l = 0; l < c.num_layers; ++l) {
      if (!c.layer_is_moe[l]) continue;
      for (ExpertPartId id : {ExpertPartId::Gate, ExpertPartId::Up, ExpertPartId::Down})
        parts.push_back({l, id,
                         size_t(id == ExpertPartId::Down ? c.moe_intermediate_size : c.hidden_size),
                         src_.expert_part_format(l, id)});
    }
    if (parts.empty()) fail(src_.dir() + ": the model has no MoE layers");
    auto refuse = [&](const std::string& head, const Part& p, QuantFormat fmt) {
      fail(head + ": '" + src_.expert_tensor_name(p.layer, p.id) + "' has " +
           std::to_string(p.cols) + " columns, which " + format_name(fmt) +
           " cannot hold (needs a multiple of its group size)");
    };
    if (opts_.experts_format) {
      for (const Part& p : parts)
        if (!format_accepts_cols(*opts_.experts_format, p.cols))
          refuse("--experts " + format_name(*opts_.experts_format), p, *opts_.experts_format);
      return *opts_.experts_format;
    }
    const QuantFormat first = parts[0].fmt;
    const bool same =
        std::all_of(parts.begin(), parts.end(), [&](const Part& p) { return p.fmt == first; });
    const bool all_affine = std::all_of(
        parts.begin(), parts.end(), [](const Part& p) { return p.fmt.kind == QuantKind::Affine; });
    QuantFormat fmt = first;
    if (all_affine) {
      int bits = 0, group = first.group;
      for (const Part& p : parts) {
        bits = std::max(bits, widened_format(p.fmt).bits);
        group = std::min(group, p.fmt.group);
      }
      fmt = QuantFormat::affine(bits, group);
      for (const Part& p : parts)
        if (!widens_exactly(p.fmt, fmt) && p.fmt != fmt)
          fail(src_.dir() + ": expert matrices of groups " + std::to_string(first.group) + " and " +
               std::to_string(p.fmt.group) +
               " cannot share one format; convert with "
               "--experts q8_0 or --experts bf16");
      if (!same || fmt != first)
        note("the checkpoint's expert matrices (" + format_name(first) +
             (same ? "" : " and others") + ") are stored as " + format_name(fmt) +
             ", re-encoded exactly");
    } else if (!same) {
      // Typically mlx-lm leaving one matrix unquantized (its width is not a multiple of the
      // group size) beside quantized siblings: no one format holds both without a choice.
      const auto odd =
          std::find_if(parts.begin(), parts.end(), [&](const Part& p) { return p.fmt != first; });
      fail(src_.dir() + ": routed expert matrices come in different formats ('" +
           src_.expert_tensor_name(parts[0].layer, parts[0].id) + "' " + format_name(first) +
           ", '" + src_.expert_tensor_name(odd->layer, odd->id) + "' " + format_name(odd->fmt) +
           "); choose one with --experts (bf16, or q8_0 / q4 where " + "the widths allow)");
    }
    for (const Part& p : parts)
      if (!format_accepts_cols(fmt, p.cols)) refuse(src_.dir(), p, fmt);
    return fmt;
  }

  uint64_t write_resident(const PackageManifest& m) {
    std::vector<std::string> used;
    int widened = 0;
    for (const TensorSpec& spec : resident_tensor_specs(m.config)) {
      used.push_back(src_.prefix() + spec.name);
      if (spec.name == "lm_head.weight") used.pop_back();
      QuantFormat fmt;
      std::vector<uint8_t> bytes;
      if (spec.role == TensorRole::Matrix) {
        std::vector<uint8_t> decoded;  // an FP8 matrix decoded to bf16
        DerivedMatrix derived;
        MatrixView v;
        if (spec.derive == Derive::None) {
          v = src_.matrix(spec.name, spec.shape[0], spec.shape[1], &decoded);
          fmt = resident_matrix_format(spec, v.fmt, opts_.resident_format);
        } else {
          used.push_back(src_.prefix() + spec.source);
          const std::vector<int64_t> shape = derive_source_shape(spec, m.config);
          const MatrixView s = src_.matrix(spec.source, shape[0], shape[1], &decoded);
          derived = derive_matrix(spec, s, m.config);
          v = derived.view;
          // Row permutations keep the source format; the f32 split of kv_b_proj is stored as
          // bf16 (exact for 16-bit sources) unless the source was f32.
          const QuantFormat base = v.fmt.kind != QuantKind::F32 || s.fmt.kind == QuantKind::F32
                                       ? v.fmt
                                       : QuantFormat::bf16();
          fmt = resident_matrix_format(spec, base, opts_.resident_format);
        }
        if (fmt.kind == QuantKind::Affine && fmt.bits != 4 && fmt.bits != 8) {
          fmt = widened_format(fmt);  // MLX 2/3/5/6 bits: the package stores 4 or 8
          ++widened;
        }
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
    if (widened > 0)
      note(std::to_string(widened) +
           " resident matrices with 2, 3, 5 or 6-bit codes stored at 4 or 8 bits, re-encoded "
           "exactly");
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
          thread_local std::vector<uint8_t> decoded;  // an FP8 matrix decoded to bf16
          auto part = [&](ExpertPartId id) { return src_.expert(layer, e, id, &decoded); };
          write_matrix(part(ExpertPartId::Gate), el.fmt, rec + el.gate.offset);
          write_matrix(part(ExpertPartId::Up), el.fmt, rec + el.up.offset);
          write_matrix(part(ExpertPartId::Down), el.fmt, rec + el.down.offset);
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
    check_chat_template();
  }

  // The chat template travels verbatim with the tokenizer files; a template our interpreter
  // cannot parse is reported now, not at the first `moeflux chat`.
  void check_chat_template() const {
    try {
      const ChatTemplates templates = load_chat_templates([&](const std::string& name) {
        std::optional<std::string> text;
        const fs::path p = fs::path(src_.dir()) / name;
        if (std::ifstream in(p, std::ios::binary); in) {
          std::stringstream ss;
          ss << in.rdbuf();
          text = ss.str();
        }
        return text;
      });
      if (templates.empty()) note("the checkpoint has no chat template");
      for (const auto& [name, text] : templates.named) ChatTemplate::parse(text);
    } catch (const Error& e) {
      std::fprintf(stderr, "[convert] warning: %s (chat and run --chat will refuse it)\n",
                   e.what());
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
