// Reading safetensors files and Hugging Face checkpoint directories, memory-mapped and validated.
//
// File layout (https://github.com/huggingface/safetensors):
//   [0, 8)            : N, the header length, u64 little-endian
//   [8, 8+N)          : header, a UTF-8 JSON object:
//                         { "<tensor name>": {"dtype": "BF16", "shape": [d0, d1, ...],
//                                             "data_offsets": [begin, end]}, ...,
//                           "__metadata__": {"<key>": "<value>", ...} (optional) }
//   [8+N, file end)   : data section; a tensor's bytes are [8+N+begin, 8+N+end), row-major,
//                       little-endian.
//
// The file is untrusted input: every check below fails with a one-line moeflux::Error naming the
// file (and the tensor). After open() succeeds, for every tensor t:
//   - t.data .. t.data + t.nbytes lies inside the mapping (t.data may be one past the end of the
//     data section when t.nbytes == 0);
//   - t.nbytes == t.numel() * dtype_size(t.dtype), computed without overflow;
//   - no two tensors with nbytes > 0 share a byte; names are unique.
// Gaps between tensors are allowed. Tensor data is NOT necessarily aligned (the format only pads
// the header to 8 bytes in practice): read through memcpy or check alignment before casting.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/mapped_file.hpp"

namespace moeflux {

// Element types of safetensors (the dtype strings have the same spelling).
enum class DType {
  F64,
  F32,
  F16,
  BF16,
  I64,
  I32,
  I16,
  I8,
  U64,
  U32,
  U16,
  U8,
  BOOL,
  F8_E4M3,
  F8_E5M2
};

size_t dtype_size(DType t);       // bytes per element
const char* dtype_name(DType t);  // "F64", "BF16", ... (the safetensors spelling)
// Parses a safetensors dtype string; returns false (leaving *out alone) if it isn't one.
bool parse_dtype(const std::string& s, DType* out);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;     // every dim >= 0; [] for a scalar (numel 1)
  const uint8_t* data = nullptr;  // into the file's mapping; valid while its owner lives
  size_t nbytes = 0;              // == numel() * dtype_size(dtype)
  std::string file;               // path of the file holding it

  size_t numel() const;  // product of shape (1 for a scalar); validated not to overflow
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws moeflux::Error("<path>: <problem>") on any failure.
  static SafetensorsFile open(const std::string& path);

  // Tensors in header order (the JSON object's key order as parsed: sorted by name).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr if absent.
  const TensorInfo* find(const std::string& name) const;
  // The "__metadata__" object, or an empty object.
  const nlohmann::json& metadata() const { return metadata_; }
  const std::string& path() const { return file_.path(); }
  const MappedFile& mapped() const { return file_; }

 private:
  MappedFile file_;
  std::vector<TensorInfo> tensors_;  // heap buffer: element addresses survive moves of *this
  std::unordered_map<std::string, size_t> index_;  // name -> position in tensors_
  nlohmann::json metadata_ = nlohmann::json::object();
};

// A Hugging Face model directory: one or more safetensors shards.
//   - model.safetensors.index.json present: its "weight_map" (name -> shard file name, relative
//     to the directory) decides the shards; each listed name must be in the shard it names;
//   - else model.safetensors;
//   - else every *.safetensors in the directory, in sorted order.
// Tensor names are unique across all shards. All shards stay mapped while the Checkpoint lives;
// TensorInfo pointers and references stay valid across moves of the Checkpoint.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& dir);

  const TensorInfo* find(const std::string& name) const;  // nullptr if absent
  // Throws Error("<dir>: tensor '<name>' not found").
  const TensorInfo& get(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::string& dir() const { return dir_; }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }

 private:
  std::string dir_;
  std::vector<SafetensorsFile> shards_;
  std::unordered_map<std::string, const TensorInfo*> index_;  // points into shards_[i].tensors()
};

}  // namespace moeflux
