#include "formats/safetensors.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <map>
#include <unordered_set>
#include <utility>

#include "core/error.hpp"

namespace moeflux {

namespace {

using nlohmann::json;

// The header is at most this many bytes (the reference implementation's limit). Bounds the
// memory a hostile file can make us spend on JSON.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// A safetensors header nests 3 deep (object -> entry -> shape); anything far deeper is hostile.
constexpr int kMaxJsonDepth = 32;

constexpr struct {
  const char* name;
  DType type;
  size_t size;
} kDTypes[] = {
    {"F64", DType::F64, 8},   {"F32", DType::F32, 4},         {"F16", DType::F16, 2},
    {"BF16", DType::BF16, 2}, {"I64", DType::I64, 8},         {"I32", DType::I32, 4},
    {"I16", DType::I16, 2},   {"I8", DType::I8, 1},           {"U64", DType::U64, 8},
    {"U32", DType::U32, 4},   {"U16", DType::U16, 2},         {"U8", DType::U8, 1},
    {"BOOL", DType::BOOL, 1}, {"F8_E4M3", DType::F8_E4M3, 1}, {"F8_E5M2", DType::F8_E5M2, 1},
};

// Renders untrusted text for a one-line error message: control characters and DEL become \xNN,
// with `escape_high` bytes >= 0x80 too (for text that may not be valid UTF-8); long text is cut.
std::string sanitize(const std::string& s, bool escape_high) {
  constexpr size_t kMax = 160;
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (out.size() >= kMax) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || (escape_high && c >= 0x80)) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else if (c >= 0x80 && out.size() + 4 >= kMax) {
      // Don't cut a UTF-8 sequence in half: stop before a multi-byte character near the limit.
      out += "...";
      break;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// '<name>' for messages; `name` came from the header, which is valid UTF-8 once parsed.
std::string quote(const std::string& name) {
  // Built with append(): GCC 12's -Wrestrict misfires on "'" + std::string + "'".
  std::string out = "'";
  out.append(sanitize(name, false));
  out.push_back('\'');
  return out;
}

uint64_t load_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses untrusted JSON bytes. Rejects nesting deeper than kMaxJsonDepth and duplicate keys in
// any object (a JSON object with two equal keys means different things to different parsers).
// nlohmann's lexer rejects invalid UTF-8 inside strings, and anything non-ASCII outside strings
// is a syntax error, so a successful parse implies valid UTF-8.
json parse_json(const std::string& path, const uint8_t* begin, const uint8_t* end) {
  std::vector<std::unordered_set<std::string>> keys;  // one set per open object
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) -> bool {
    if (depth > kMaxJsonDepth) {
      fail(path + ": header JSON nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    }
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::key: {
        MF_ASSERT(!keys.empty() && parsed.is_string());
        const auto& key = parsed.get_ref<const std::string&>();
        if (!keys.back().insert(key).second) {
          if (keys.size() == 1) fail(path + ": duplicate tensor name " + quote(key));
          fail(path + ": duplicate key " + quote(key) + " in JSON object");
        }
        break;
      }
      case json::parse_event_t::object_end:
        MF_ASSERT(!keys.empty());
        keys.pop_back();
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    std::string msg = e.what();
    // Drop the "[json.exception.parse_error.101] " prefix.
    if (const auto p = msg.find("] "); msg.rfind("[json.exception.", 0) == 0 && p != msg.npos) {
      msg = msg.substr(p + 2);
    }
    fail(path + ": invalid JSON: " + sanitize(msg, true));
  }
}

// A JSON integer as int64 (rejects floats and values beyond int64). `what` names it for errors.
int64_t json_int64(const json& v, const std::string& what) {
  if (!v.is_number_integer()) fail(what + " is not an integer");
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(what + " is too large");
    return static_cast<int64_t>(u);
  }
  return v.get<int64_t>();
}

const json& require(const json& entry, const char* key, const std::string& where) {
  const auto it = entry.find(key);
  if (it == entry.end()) fail(where + ": missing \"" + key + "\"");
  return *it;
}

struct Range {
  uint64_t begin, end;  // byte offsets into the data section, begin <= end
  size_t tensor;        // index into tensors_
};

}  // namespace

size_t dtype_size(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.size;
  MF_ASSERT(false && "unknown DType");
  return 0;
}

const char* dtype_name(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.name;
  MF_ASSERT(false && "unknown DType");
  return "";
}

bool parse_dtype(const std::string& s, DType* out) {
  for (const auto& d : kDTypes) {
    if (s == d.name) {
      *out = d.type;
      return true;
    }
  }
  return false;
}

size_t TensorInfo::numel() const {
  // Validated at open(): with no zero dim, the product fits in size_t (an empty product is 1: a
  // scalar). With a zero dim the other dims may be huge, so the product isn't formed at all.
  for (const int64_t d : shape)
    if (d == 0) return 0;
  size_t n = 1;
  for (const int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.file_ = MappedFile::open(path);
  const uint8_t* const base = f.file_.data();
  const size_t size = f.file_.size();

  if (size < 8) {
    fail(path + ": file is " + std::to_string(size) +
         " bytes, too short for a safetensors file (needs an 8-byte header length)");
  }
  const uint64_t header_len = load_u64_le(base);
  if (header_len > kMaxHeaderBytes) {
    fail(path + ": header length " + std::to_string(header_len) + " exceeds the limit of " +
         std::to_string(kMaxHeaderBytes) + " bytes (not a safetensors file?)");
  }
  if (header_len > size - 8) {
    fail(path + ": header length " + std::to_string(header_len) + " exceeds the " +
         std::to_string(size - 8) + " bytes after the length field (truncated file?)");
  }
  const uint8_t* const header = base + 8;
  // Data section: [data, data + data_size), the rest of the file.
  const uint8_t* const data = header + header_len;
  const uint64_t data_size = size - 8 - header_len;

  json j = parse_json(path, header, data);
  if (!j.is_object()) fail(path + ": header is not a JSON object");

  std::vector<Range> ranges;
  f.tensors_.reserve(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it.value().is_object()) fail(path + ": \"__metadata__\" is not a JSON object");
      f.metadata_ = std::move(it.value());
      continue;
    }
    const std::string where = path + ": tensor " + quote(name);
    const json& entry = it.value();
    if (!entry.is_object()) fail(where + ": entry is not a JSON object");

    TensorInfo t;
    t.name = name;
    t.file = path;

    const json& dtype = require(entry, "dtype", where);
    if (!dtype.is_string()) fail(where + ": \"dtype\" is not a string");
    if (!parse_dtype(dtype.get_ref<const std::string&>(), &t.dtype)) {
      fail(where + ": unsupported dtype " + quote(dtype.get_ref<const std::string&>()));
    }

    const json& shape = require(entry, "shape", where);
    if (!shape.is_array()) fail(where + ": \"shape\" is not an array");
    t.shape.reserve(shape.size());
    bool any_zero = false;
    for (size_t i = 0; i < shape.size(); ++i) {
      const int64_t d = json_int64(shape[i], where + ": shape[" + std::to_string(i) + "]");
      if (d < 0) fail(where + ": shape[" + std::to_string(i) + "] is negative");
      any_zero |= d == 0;
      t.shape.push_back(d);
    }
    // numel and nbytes in 64 bits, overflow checked. A zero dim makes the tensor empty whatever
    // the other dims are, so it is tested first (otherwise [0, 2^40, 2^40] would "overflow").
    uint64_t nbytes = 0;
    if (!any_zero) {
      uint64_t numel = 1;
      for (const int64_t d : t.shape) {
        if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) {
          fail(where + ": element count of the shape overflows 64 bits");
        }
      }
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &nbytes)) {
        fail(where + ": byte size of the shape overflows 64 bits");
      }
    }
    static_assert(sizeof(size_t) == sizeof(uint64_t), "64-bit platforms only");

    const json& offsets = require(entry, "data_offsets", where);
    if (!offsets.is_array() || offsets.size() != 2) {
      fail(where + ": \"data_offsets\" is not an array of two integers");
    }
    const int64_t begin = json_int64(offsets[0], where + ": data_offsets[0]");
    const int64_t end = json_int64(offsets[1], where + ": data_offsets[1]");
    if (begin < 0 || end < 0) fail(where + ": data_offsets are negative");
    const std::string offs =
        "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
    if (begin > end) fail(where + ": " + offs + " has begin > end");
    if (static_cast<uint64_t>(end) > data_size) {
      fail(where + ": " + offs + " extends past the " + std::to_string(data_size) +
           "-byte data section (truncated file?)");
    }
    if (static_cast<uint64_t>(end - begin) != nbytes) {
      fail(where + ": " + offs + " spans " + std::to_string(end - begin) + " bytes but " +
           dtype_name(t.dtype) + " with this shape needs " + std::to_string(nbytes));
    }
    // In bounds: begin <= end <= data_size, so [data + begin, data + end) is inside the mapping.
    t.data = data + begin;
    t.nbytes = nbytes;
    ranges.push_back({static_cast<uint64_t>(begin), static_cast<uint64_t>(end), f.tensors_.size()});
    f.tensors_.push_back(std::move(t));
  }

  // No byte belongs to two tensors. Sorted by begin, a non-empty range overlaps an earlier one iff
  // it starts before the furthest end seen so far. Empty ranges own no bytes and are skipped.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const Range* furthest = nullptr;
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;
    if (furthest != nullptr && r.begin < furthest->end) {
      fail(path + ": tensors " + quote(f.tensors_[furthest->tensor].name) + " and " +
           quote(f.tensors_[r.tensor].name) + " overlap in the data section");
    }
    if (furthest == nullptr || r.end > furthest->end) furthest = &r;
  }

  f.index_.reserve(f.tensors_.size());
  for (size_t i = 0; i < f.tensors_.size(); ++i) {
    // JSON object keys are unique (parse_json rejects duplicates), so insertion always succeeds.
    const bool inserted = f.index_.emplace(f.tensors_[i].name, i).second;
    MF_ASSERT(inserted);
  }
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---------------------------------------------------------------------------------------------

namespace {

namespace fs = std::filesystem;

// A weight_map value must name a file inside the checkpoint directory: relative, no "..".
bool safe_shard_name(const std::string& s) {
  if (s.empty() || s.find('\0') != s.npos) return false;
  const fs::path p(s);
  if (p.is_absolute() || !p.has_filename()) return false;
  for (const auto& part : p)
    if (part == "..") return false;
  return true;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& dir) {
  Checkpoint c;
  c.dir_ = dir;

  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) throw_errno(dir);
  if (!S_ISDIR(st.st_mode)) fail(dir + ": not a directory");
  std::error_code ec;
  const fs::path root(dir);

  const fs::path index_path = root / "model.safetensors.index.json";
  const fs::path single_path = root / "model.safetensors";
  if (fs::exists(index_path, ec)) {
    const std::string ipath = index_path.string();
    const MappedFile index_file = MappedFile::open(ipath);
    const json index = parse_json(ipath, index_file.data(), index_file.data() + index_file.size());
    if (!index.is_object()) fail(ipath + ": not a JSON object");
    const auto wm = index.find("weight_map");
    if (wm == index.end()) fail(ipath + ": missing \"weight_map\"");
    if (!wm->is_object()) fail(ipath + ": \"weight_map\" is not a JSON object");
    if (wm->empty()) fail(ipath + ": \"weight_map\" is empty");

    // shard file name -> the tensor names the index puts there (sorted: deterministic order).
    std::map<std::string, std::vector<std::string>> by_shard;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) {
        fail(ipath + ": weight_map entry for " + quote(it.key()) + " is not a string");
      }
      const auto& shard = it.value().get_ref<const std::string&>();
      if (!safe_shard_name(shard)) {
        fail(ipath + ": weight_map entry for " + quote(it.key()) + " names " + quote(shard) +
             ", not a file inside the checkpoint directory");
      }
      by_shard[shard].push_back(it.key());
    }
    c.shards_.reserve(by_shard.size());
    for (const auto& [shard, names] : by_shard) {
      c.shards_.push_back(SafetensorsFile::open((root / shard).string()));
      const SafetensorsFile& f = c.shards_.back();
      for (const auto& name : names) {
        if (f.find(name) == nullptr) {
          fail(ipath + ": tensor " + quote(name) + " is mapped to " + quote(shard) +
               " but that shard does not contain it");
        }
      }
    }
  } else if (fs::exists(single_path, ec)) {
    c.shards_.push_back(SafetensorsFile::open(single_path.string()));
  } else {
    std::vector<std::string> files;
    for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
      std::error_code fec;
      if (it->path().extension() == ".safetensors" && it->is_regular_file(fec)) {
        files.push_back(it->path().string());
      }
    }
    if (ec) fail(dir + ": " + ec.message());
    if (files.empty()) {
      fail(dir +
           ": no safetensors files (expected model.safetensors or "
           "model.safetensors.index.json)");
    }
    std::sort(files.begin(), files.end());
    c.shards_.reserve(files.size());
    for (const auto& file : files) c.shards_.push_back(SafetensorsFile::open(file));
  }

  // Built after every shard is in place: the pointers target each shard's tensor vector, whose
  // heap buffer doesn't move when the SafetensorsFile (or the Checkpoint) is moved.
  for (const SafetensorsFile& f : c.shards_) {
    for (const TensorInfo& t : f.tensors()) {
      const auto [it, inserted] = c.index_.emplace(t.name, &t);
      if (!inserted) {
        fail(dir + ": tensor " + quote(t.name) + " appears in both " + it->second->file + " and " +
             t.file);
      }
    }
  }
  return c;
}

const TensorInfo* Checkpoint::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const TensorInfo& Checkpoint::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) fail(dir_ + ": tensor " + quote(name) + " not found");
  return *t;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, t] : index_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace moeflux
