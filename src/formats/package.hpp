// The moeflux package: a converted model, laid out for streaming experts (docs/DESIGN.md).
//
//   PKG/manifest.json          versioned description (this file's PackageManifest)
//   PKG/resident.bin           every non-expert tensor, each 64-byte aligned, memory-mapped
//   PKG/experts/layer_NNN.bin  one file per MoE layer: num_experts records, record e at byte
//                              e * record_bytes; a record is gate | up | down (each a stored
//                              matrix, core/quant_format.hpp), zero-padded to 4096 bytes so one
//                              expert is one aligned read (O_DIRECT-able)
//   PKG/tokenizer/...          the checkpoint's tokenizer files, copied verbatim
//
// Resident tensor names are the checkpoint's names with the text-model prefix removed
// ("layers.0.self_attn.q_proj.weight", "embed_tokens.weight", "lm_head.weight").
// Vectors (norm weights, biases, A_log, dt_bias) are stored as f32; the Gated DeltaNet conv
// weight as f32 [channels, kernel]; matrices keep the checkpoint's format (bf16/f16/f32, or
// MLX affine) unless converted.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/mapped_file.hpp"
#include "core/quant_format.hpp"
#include "model/config.hpp"

namespace moeflux {

// Version 2 added CRC-32C checksums of every resident tensor and expert record. Version 1
// packages still open (with a warning), unverified.
inline constexpr int kPackageVersion = 2;
inline constexpr int kOldestPackageVersion = 1;
inline constexpr size_t kExpertAlignment = 4096;
inline constexpr size_t kResidentAlignment = 64;

struct ResidentTensor {
  std::string name;
  QuantFormat fmt;
  std::vector<int64_t> shape;  // [n] for vectors, [rows, cols] for matrices
  uint64_t offset = 0;         // into resident.bin
  uint64_t bytes = 0;
  uint32_t crc32c = 0;  // of its `bytes` bytes (version 2 on)
};

// One matrix inside an expert record.
struct ExpertPart {
  size_t rows = 0, cols = 0;
  size_t offset = 0;  // from the start of the record
  size_t bytes = 0;
};

// The record of one routed expert: y = down · (silu(gate · x) ⊙ (up · x)).
struct ExpertLayout {
  QuantFormat fmt;
  ExpertPart gate, up,
      down;  // gate, up: [moe_intermediate, hidden]; down: [hidden, moe_intermediate]
  size_t record_bytes = 0;  // padded to kExpertAlignment

  static ExpertLayout make(QuantFormat fmt, size_t hidden, size_t intermediate);
  // The expert's useful bytes (without padding).
  size_t payload_bytes() const { return down.offset + down.bytes; }
};

struct PackageManifest {
  int version = kPackageVersion;
  ModelConfig config;
  nlohmann::json source_config;  // the checkpoint's config.json, verbatim
  std::string source;            // where it was converted from (informational)
  std::vector<ResidentTensor> resident;
  ExpertLayout experts;
  std::vector<std::string> expert_files;  // per layer, relative path; "" for dense layers
  std::vector<std::string> tokenizer_files;
  // Version 2 on: record_crc32c[layer][expert] is the CRC-32C (core/crc32c.hpp) of the whole
  // record (record_bytes, padding included); empty for dense layers. Version 1: empty.
  std::vector<std::vector<uint32_t>> record_crc32c;

  bool has_checksums() const { return version >= 2; }
  nlohmann::json to_json() const;
  static PackageManifest from_json(const nlohmann::json& j, const std::string& source);
};

struct PackageOpenOptions {
  // Check every resident tensor against its checksum (a corrupt one is an error naming it).
  bool verify_resident = true;
  // Print a one-line warning on stderr when the package has no checksums (version 1).
  bool warn_unverified = true;
};

// A package opened for reading: manifest validated against the files on disk, resident.bin
// mapped (and verified, by default). Throws moeflux::Error naming the file and the problem.
class Package {
 public:
  static Package open(const std::string& dir, const PackageOpenOptions& opts = {});

  const std::string& dir() const { return dir_; }
  const PackageManifest& manifest() const { return manifest_; }
  const ModelConfig& config() const { return manifest_.config; }

  const ResidentTensor* find(const std::string& name) const;
  // Binds a resident matrix by name, checking its shape; errors say expected vs found.
  MatrixView matrix(const std::string& name, size_t rows, size_t cols) const;
  // Binds a resident f32 vector of n elements.
  const float* vector(const std::string& name, size_t n) const;
  bool has(const std::string& name) const { return find(name) != nullptr; }

  std::string expert_file_path(int layer) const;
  uint64_t resident_bytes() const;
  // The bytes of resident tensor t (t.bytes of them).
  const uint8_t* resident_data(const ResidentTensor& t) const {
    return resident_.data() + t.offset;
  }
  // The whole mapped resident.bin (every resident tensor lies inside it).
  const uint8_t* resident_base() const { return resident_.data(); }
  size_t resident_size() const { return resident_.size(); }

 private:
  std::string dir_;
  PackageManifest manifest_;
  MappedFile resident_;
};

// The paths inside a package.
inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kResidentName = "resident.bin";
std::string expert_file_name(int layer);  // "experts/layer_NNN.bin"
inline constexpr const char* kTokenizerDir = "tokenizer";
// True for "tokenizer/<name>" with <name> a plain file name (no '/', not "." or ".."): the only
// tokenizer paths a manifest may list.
bool is_tokenizer_file_name(const std::string& rel);

}  // namespace moeflux
