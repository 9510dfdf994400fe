#include "convert/converter.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "backend/cpu/matvec.hpp"
#include "backend/cpu/quantize.hpp"
#include "convert/source_checkpoint.hpp"
#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "formats/package.hpp"
#include "model/tensor_specs.hpp"

namespace fs = std::filesystem;

namespace moeflux {

namespace {

// Tokenizer and generation files copied verbatim into PKG/tokenizer/ when present.
const char* const kTokenizerFiles[] = {"tokenizer.json",        "tokenizer_config.json",
                                       "special_tokens_map.json", "vocab.json",
                                       "merges.txt",            "generation_config.json",
                                       "chat_template.jinja",   "chat_template.json"};

// A file written with write(2), fsync'ed on close.
class OutFile {
 public:
  explicit OutFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw_errno(path);
  }
  ~OutFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  void write(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd_, b, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw_errno(path_ + ": write");
      }
      b += w;
      n -= static_cast<size_t>(w);
      offset_ += static_cast<uint64_t>(w);
    }
  }
  void pad_to(size_t alignment) {
    static const uint8_t zeros[4096] = {};
    while (offset_ % alignment) write(zeros, std::min<size_t>(alignment - offset_ % alignment, sizeof zeros));
  }
  uint64_t offset() const { return offset_; }
  void close() {
    if (::fsync(fd_) != 0) throw_errno(path_ + ": fsync");
    if (::close(std::exchange(fd_, -1)) != 0) throw_errno(path_ + ": close");
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t offset_ = 0;
};

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
    std::memcpy(out + dl.data_offset + r * rl.data_bytes, rec.data() + rl.data_offset, rl.data_bytes);
    if (rl.scales_bytes)
      std::memcpy(out + dl.scales_offset + r * rl.scales_bytes, rec.data() + rl.scales_offset, rl.scales_bytes);
    if (rl.biases_bytes)
      std::memcpy(out + dl.biases_offset + r * rl.biases_bytes, rec.data() + rl.biases_offset, rl.biases_bytes);
  }
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return buf;
}

class Converter {
 public:
  Converter(const SourceCheckpoint& src, const std::string& dir, const ConvertOptions& opts)
      : src_(src), dir_(dir), opts_(opts), pool_(opts.threads) {}

  ConvertSummary run() {
    const auto t0 = std::chrono::steady_clock::now();
    const ModelConfig& c = src_.config();
    PackageManifest m;
    m.config = c;
    m.source_config = src_.config_json();
    m.source = fs::absolute(src_.dir()).lexically_normal().string();

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
    fs::create_directories(dir_ + "/experts");
    for (int l = 0; l < c.num_layers; ++l) {
      if (!c.layer_is_moe[l]) {
        m.expert_files.emplace_back();
        continue;
      }
      m.expert_files.push_back(expert_file_name(l));
      s.expert_bytes += write_expert_layer(m.experts, l, dir_ + "/" + m.expert_files.back());
      ++s.moe_layers;
      if (opts_.progress) {
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::fprintf(stderr, "\r[convert] experts: layer %d/%d  %s written  %.0f MB/s   ", l + 1,
                     c.num_layers, human_bytes(double(s.expert_bytes)).c_str(),
                     s.expert_bytes / 1e6 / std::max(sec, 1e-9));
        std::fflush(stderr);
      }
    }
    if (opts_.progress) std::fprintf(stderr, "\n");
    copy_tokenizer(m);

    // The manifest is written last: a package without one is never taken for whole.
    const std::string mpath = dir_ + "/" + kManifestName;
    {
      std::ofstream out(mpath);
      out << m.to_json().dump(1) << "\n";
      if (!out.flush()) fail(mpath + ": write failed");
    }
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return s;
  }

 private:
  uint64_t write_resident(PackageManifest& m) {
    OutFile out(dir_ + "/" + kResidentName);
    std::vector<std::string> used;
    uint64_t total = 0;
    for (const TensorSpec& spec : resident_tensor_specs(m.config)) {
      used.push_back(src_.prefix() + spec.name);
      if (spec.name == "lm_head.weight") used.pop_back();
      ResidentTensor t;
      t.name = spec.name;
      t.shape = spec.shape;
      std::vector<uint8_t> bytes;
      if (spec.role == TensorRole::Matrix) {
        const MatrixView v = src_.matrix(spec.name, spec.shape[0], spec.shape[1]);
        t.fmt = v.fmt;
        bytes.resize(matrix_layout(v.fmt, v.rows, v.cols).total_bytes);
        write_matrix(v, v.fmt, bytes.data());
      } else {
        const std::vector<float> f =
            spec.role == TensorRole::Vector
                ? src_.vector(spec.name, spec.shape[0])
                : src_.conv_weight(spec.name, spec.shape[0], spec.shape[1]);
        t.fmt = QuantFormat::f32();
        bytes.resize(f.size() * sizeof(float));
        std::memcpy(bytes.data(), f.data(), bytes.size());
      }
      out.pad_to(kResidentAlignment);
      t.offset = out.offset();
      t.bytes = bytes.size();
      out.write(bytes.data(), bytes.size());
      total += t.bytes;
      m.resident.push_back(std::move(t));
    }
    out.close();
    const auto unused = src_.unused_tensors(used);
    if (!unused.empty() && opts_.progress) {
      std::fprintf(stderr, "[convert] warning: %zu checkpoint tensors not used (first: %s)\n",
                   unused.size(), unused.front().c_str());
    }
    return total;
  }

  // Builds records in batches (parallel), writes them in order.
  uint64_t write_expert_layer(const ExpertLayout& el, int layer, const std::string& path) {
    const int E = src_.config().num_experts;
    const int batch = static_cast<int>(std::max<size_t>(pool_.size() * 2, 1));
    AlignedBuffer buf(el.record_bytes * batch, kExpertAlignment);
    OutFile out(path);
    for (int e0 = 0; e0 < E; e0 += batch) {
      const int n = std::min(batch, E - e0);
      std::memset(buf.data(), 0, el.record_bytes * n);
      pool_.parallel_for(static_cast<size_t>(n), [&](size_t b, size_t end) {
        for (size_t i = b; i < end; ++i) {
          uint8_t* rec = buf.data() + i * el.record_bytes;
          const int e = e0 + static_cast<int>(i);
          write_matrix(src_.expert(layer, e, ExpertPartId::Gate), el.fmt, rec + el.gate.offset);
          write_matrix(src_.expert(layer, e, ExpertPartId::Up), el.fmt, rec + el.up.offset);
          write_matrix(src_.expert(layer, e, ExpertPartId::Down), el.fmt, rec + el.down.offset);
        }
      });
      out.write(buf.data(), el.record_bytes * n);
    }
    out.close();
    return static_cast<uint64_t>(E) * el.record_bytes;
  }

  void copy_tokenizer(PackageManifest& m) {
    for (const char* name : kTokenizerFiles) {
      const fs::path from = fs::path(src_.dir()) / name;
      if (!fs::exists(from)) continue;
      fs::create_directories(dir_ + "/tokenizer");
      fs::copy_file(from, fs::path(dir_) / "tokenizer" / name);
      m.tokenizer_files.push_back(std::string("tokenizer/") + name);
    }
  }

  const SourceCheckpoint& src_;
  std::string dir_;
  const ConvertOptions& opts_;
  ThreadPool pool_;
};

}  // namespace

ConvertSummary convert_checkpoint(const std::string& hf_dir, const std::string& out_dir,
                                  const ConvertOptions& opts) {
  const SourceCheckpoint src = SourceCheckpoint::open(hf_dir);
  std::string target = out_dir;
  while (target.size() > 1 && target.back() == '/') target.pop_back();
  if (fs::exists(target) && !opts.force)
    fail(target + ": already exists (pass --force to replace it)");
  const std::string tmp = target + ".partial-" + std::to_string(::getpid());
  fs::remove_all(tmp);
  try {
    fs::create_directories(tmp);
    ConvertSummary s = Converter(src, tmp, opts).run();
    if (fs::exists(target)) {
      const std::string old = target + ".old-" + std::to_string(::getpid());
      fs::rename(target, old);
      fs::rename(tmp, target);
      fs::remove_all(old);
    } else {
      fs::rename(tmp, target);
    }
    return s;
  } catch (const fs::filesystem_error& e) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fail(std::string("convert: ") + e.what());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace moeflux
