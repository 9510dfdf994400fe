#include "formats/package.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>

#include "core/error.hpp"
#include "core/json_fields.hpp"
#include "formats/package_verify.hpp"

namespace moeflux {

using nlohmann::json;

namespace {

size_t align_up(size_t x, size_t a) {
  return (x + a - 1) / a * a;
}

ExpertPart make_part(QuantFormat fmt, size_t rows, size_t cols, size_t offset) {
  ExpertPart p;
  p.rows = rows;
  p.cols = cols;
  p.offset = offset;
  p.bytes = matrix_layout(fmt, rows, cols).total_bytes;
  return p;
}

json part_json(const ExpertPart& p) {
  return {{"rows", p.rows}, {"cols", p.cols}, {"offset", p.offset}, {"bytes", p.bytes}};
}

// Manifest byte counts and offsets above this are lies (1 PiB).
constexpr uint64_t kMaxBytes = uint64_t{1} << 50;

ExpertPart part_from_json(const json& j, const std::string& what) {
  ExpertPart p;
  p.rows = json_uint(j.at("rows"), what + " rows", kMaxBytes);
  p.cols = json_uint(j.at("cols"), what + " cols", kMaxBytes);
  p.offset = json_uint(j.at("offset"), what + " offset", kMaxBytes);
  p.bytes = json_uint(j.at("bytes"), what + " bytes", kMaxBytes);
  return p;
}

bool same_part(const ExpertPart& a, const ExpertPart& b) {
  return a.rows == b.rows && a.cols == b.cols && a.offset == b.offset && a.bytes == b.bytes;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

uint64_t file_size_or_fail(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw_errno(path);
  if (S_ISDIR(st.st_mode)) fail(path + ": is a directory, not a file");
  if (!S_ISREG(st.st_mode)) fail(path + ": not a regular file");
  return static_cast<uint64_t>(st.st_size);
}

}  // namespace

bool is_tokenizer_file_name(const std::string& rel) {
  const std::string dir = kTokenizerDir;
  if (rel.size() <= dir.size() + 1 || rel.compare(0, dir.size(), dir) != 0 ||
      rel[dir.size()] != '/')
    return false;
  const std::string name = rel.substr(dir.size() + 1);
  return name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

std::string expert_file_name(int layer) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "experts/layer_%03d.bin", layer);
  return buf;
}

ExpertLayout ExpertLayout::make(QuantFormat fmt, size_t hidden, size_t intermediate) {
  ExpertLayout l;
  l.fmt = fmt;
  l.gate = make_part(fmt, intermediate, hidden, 0);
  l.up = make_part(fmt, intermediate, hidden, l.gate.offset + l.gate.bytes);
  l.down = make_part(fmt, hidden, intermediate, l.up.offset + l.up.bytes);
  l.record_bytes = align_up(l.payload_bytes(), kExpertAlignment);
  return l;
}

json PackageManifest::to_json() const {
  json res = json::array();
  for (const auto& t : resident) {
    res.push_back({{"name", t.name},
                   {"format", format_name(t.fmt)},
                   {"shape", t.shape},
                   {"offset", t.offset},
                   {"bytes", t.bytes}});
    if (has_checksums()) res.back()["crc32c"] = t.crc32c;
  }
  json out = {{"format", "moeflux-package"},
              {"version", version},
              {"source", source},
              {"config", config.to_json()},
              {"source_config", source_config},
              {"resident", {{"file", kResidentName}, {"tensors", res}}},
              {"experts",
               {{"format", format_name(experts.fmt)},
                {"alignment", kExpertAlignment},
                {"record_bytes", experts.record_bytes},
                {"gate", part_json(experts.gate)},
                {"up", part_json(experts.up)},
                {"down", part_json(experts.down)},
                {"files", expert_files}}},
              {"tokenizer_files", tokenizer_files}};
  if (has_checksums()) {
    out["checksum"] = "crc32c";
    out["experts"]["record_crc32c"] = record_crc32c;
  }
  return out;
}

PackageManifest PackageManifest::from_json(const json& j, const std::string& source) {
  if (!j.is_object() || !j.contains("format") || j["format"] != "moeflux-package")
    fail(source + ": not a moeflux package manifest");
  const json version = j.contains("version") ? j["version"] : json();
  if (!version.is_number_integer() || version < kOldestPackageVersion || version > kPackageVersion)
    fail(source + ": package version " +
         (version.is_null() ? std::string("(none)") : printable(version.dump())) +
         " is not supported (this build reads versions " + std::to_string(kOldestPackageVersion) +
         " to " + std::to_string(kPackageVersion) + "); convert the model again");
  PackageManifest m;
  try {
    m.version = version.get<int>();
    if (m.has_checksums() && j.value("checksum", std::string()) != "crc32c")
      fail(source + ": 'checksum' must be \"crc32c\"");
    m.source = j.value("source", "");
    m.config = ModelConfig::from_json(j.at("config"), source);
    m.source_config = j.value("source_config", json::object());
    for (const auto& t : j.at("resident").at("tensors")) {
      ResidentTensor r;
      r.name = t.at("name").get<std::string>();
      r.fmt = parse_format(t.at("format").get<std::string>());
      const std::string what = source + ": tensor '" + printable(r.name) + "'";
      const json& shape = t.at("shape");
      if (!shape.is_array() || shape.empty() || shape.size() > 2)
        fail(what + ": shape must be [n] or [rows, cols]");
      for (const json& d : shape)
        r.shape.push_back(json_int(d, what + " shape", 1, int64_t{1} << 31));
      r.offset = json_uint(t.at("offset"), what + " offset", kMaxBytes);
      r.bytes = json_uint(t.at("bytes"), what + " bytes", kMaxBytes);
      if (m.has_checksums())
        r.crc32c = static_cast<uint32_t>(json_uint(t.at("crc32c"), what + " crc32c", 0xFFFFFFFFu));
      m.resident.push_back(std::move(r));
    }
    const json& e = j.at("experts");
    const QuantFormat fmt = parse_format(e.at("format").get<std::string>());
    const ModelConfig& c = m.config;
    if (!format_accepts_cols(fmt, static_cast<size_t>(c.hidden_size)) ||
        !format_accepts_cols(fmt, static_cast<size_t>(c.moe_intermediate_size)))
      fail(source + ": expert format " + format_name(fmt) + " cannot hold the model's matrices");
    m.experts = ExpertLayout::make(fmt, c.hidden_size, c.moe_intermediate_size);
    if (m.experts.record_bytes > kMaxBytes / std::max(1, c.num_experts))
      fail(source + ": expert layer files would exceed " + std::to_string(kMaxBytes >> 50) +
           " PiB");
    if (json_uint(e.at("record_bytes"), source + ": record_bytes", kMaxBytes) !=
            m.experts.record_bytes ||
        !same_part(part_from_json(e.at("gate"), source + ": gate"), m.experts.gate) ||
        !same_part(part_from_json(e.at("up"), source + ": up"), m.experts.up) ||
        !same_part(part_from_json(e.at("down"), source + ": down"), m.experts.down))
      fail(source + ": expert record layout does not match the model config and format " +
           format_name(fmt));
    m.expert_files = e.at("files").get<std::vector<std::string>>();
    if (m.has_checksums()) {
      const json& crcs = e.at("record_crc32c");
      if (!crcs.is_array() || static_cast<int>(crcs.size()) != c.num_layers)
        fail(source + ": 'record_crc32c' must list one array per layer");
      for (int l = 0; l < c.num_layers; ++l) {
        const json& layer = crcs[l];
        const size_t want = c.layer_is_moe[l] ? static_cast<size_t>(c.num_experts) : 0;
        if (!layer.is_array() || layer.size() != want)
          fail(source + ": 'record_crc32c' of layer " + std::to_string(l) + " must hold " +
               std::to_string(want) + " checksums");
        std::vector<uint32_t> v;
        v.reserve(want);
        for (const json& x : layer)
          v.push_back(static_cast<uint32_t>(
              json_uint(x, source + ": a checksum of layer " + std::to_string(l), 0xFFFFFFFFu)));
        m.record_crc32c.push_back(std::move(v));
      }
    }
    m.tokenizer_files = j.value("tokenizer_files", std::vector<std::string>{});
    // The writer's names only ("tokenizer/<file name>"), as for expert files: a manifest cannot
    // point a reader at a file outside the package.
    for (const std::string& f : m.tokenizer_files)
      if (!is_tokenizer_file_name(f))
        fail(source + ": tokenizer file '" + printable(f) +
             "' is not a file name under tokenizer/ inside the package");
  } catch (const json::exception& ex) {
    fail(source + ": malformed manifest: " + ex.what());
  } catch (const Error& ex) {
    throw;
  }
  if (static_cast<int>(m.expert_files.size()) != m.config.num_layers)
    fail(source + ": expert file list has " + std::to_string(m.expert_files.size()) +
         " entries, the model has " + std::to_string(m.config.num_layers) + " layers");
  for (int l = 0; l < m.config.num_layers; ++l) {
    if (m.config.layer_is_moe[l] == m.expert_files[l].empty())
      fail(source + ": expert file list disagrees with the MoE layers at layer " +
           std::to_string(l));
    // The writer's names only: a manifest cannot point the reader outside the package.
    if (m.config.layer_is_moe[l] && m.expert_files[l] != expert_file_name(l))
      fail(source + ": expert file of layer " + std::to_string(l) + " must be '" +
           expert_file_name(l) + "'");
  }
  return m;
}

Package Package::open(const std::string& dir, const PackageOpenOptions& opts) {
  Package p;
  p.dir_ = dir;
  const std::string mpath = dir + "/" + kManifestName;
  std::ifstream in(mpath);
  if (!in) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) fail(dir + ": no such package directory");
    fail(mpath + ": missing (not a moeflux package, or an unfinished conversion)");
  }
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail(mpath + ": invalid JSON: " + e.what());
  }
  p.manifest_ = PackageManifest::from_json(j, mpath);

  const std::string rpath = dir + "/" + kResidentName;
  p.resident_ = MappedFile::open(rpath);
  // Every resident tensor must lie inside resident.bin, match its format's size, not overlap.
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::map<std::string, int> seen;
  for (const auto& t : p.manifest_.resident) {
    if (seen[t.name]++) fail(mpath + ": duplicate resident tensor '" + printable(t.name) + "'");
    uint64_t expect = 0;
    if (t.shape.size() == 1 && t.shape[0] > 0) {
      if (t.fmt.kind != QuantKind::F32)
        fail(mpath + ": vector '" + printable(t.name) + "' must be f32");
      expect = static_cast<uint64_t>(t.shape[0]) * 4;
    } else if (t.shape.size() == 2 && t.shape[0] > 0 && t.shape[1] > 0) {
      if (t.shape[0] * t.shape[1] > (int64_t{1} << 42))  // each <= 2^31 (from_json)
        fail(mpath + ": tensor '" + printable(t.name) + "' is implausibly large " +
             shape_str(t.shape));
      if (!format_accepts_cols(t.fmt, static_cast<size_t>(t.shape[1])))
        fail(mpath + ": tensor '" + printable(t.name) + "' has " + std::to_string(t.shape[1]) +
             " columns, not valid for format " + format_name(t.fmt));
      expect = matrix_layout(t.fmt, t.shape[0], t.shape[1]).total_bytes;
    } else {
      fail(mpath + ": tensor '" + printable(t.name) + "' has invalid shape " + shape_str(t.shape));
    }
    if (t.bytes != expect)
      fail(mpath + ": tensor '" + printable(t.name) + "' claims " + std::to_string(t.bytes) +
           " bytes, its shape and format need " + std::to_string(expect));
    if (t.offset > p.resident_.size() || t.bytes > p.resident_.size() - t.offset)
      fail(rpath + ": truncated: tensor '" + printable(t.name) + "' ends past the end of the file");
    if (t.offset % 4 != 0) fail(mpath + ": tensor '" + printable(t.name) + "' is misaligned");
    ranges.emplace_back(t.offset, t.offset + t.bytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) fail(mpath + ": resident tensors overlap");

  const auto& m = p.manifest_;
  for (int l = 0; l < m.config.num_layers; ++l) {
    if (!m.config.layer_is_moe[l]) continue;
    const std::string path = p.expert_file_path(l);
    const uint64_t need = static_cast<uint64_t>(m.config.num_experts) * m.experts.record_bytes;
    const uint64_t have = file_size_or_fail(path);
    if (have != need)
      fail(path + ": " + (have < need ? "truncated" : "oversized") + " expert file (" +
           std::to_string(have) + " bytes, expected " + std::to_string(need) + ")");
  }
  if (!m.has_checksums()) {
    if (opts.warn_unverified)
      std::fprintf(stderr,
                   "moeflux: warning: %s: package format version %d has no checksums, its data "
                   "is not verified (convert it again to add them)\n",
                   dir.c_str(), m.version);
  } else if (opts.verify_resident) {
    verify_resident(p);
  }
  return p;
}

const ResidentTensor* Package::find(const std::string& name) const {
  for (const auto& t : manifest_.resident)
    if (t.name == name) return &t;
  return nullptr;
}

MatrixView Package::matrix(const std::string& name, size_t rows, size_t cols) const {
  const ResidentTensor* t = find(name);
  if (!t) fail(dir_ + ": package lacks tensor '" + printable(name) + "'");
  if (t->shape.size() != 2 || static_cast<size_t>(t->shape[0]) != rows ||
      static_cast<size_t>(t->shape[1]) != cols)
    fail(dir_ + ": tensor '" + printable(name) + "': expected shape [" + std::to_string(rows) +
         ", " + std::to_string(cols) + "], found " + shape_str(t->shape));
  return MatrixView::from_record(t->fmt, rows, cols, resident_.data() + t->offset);
}

const float* Package::vector(const std::string& name, size_t n) const {
  const ResidentTensor* t = find(name);
  if (!t) fail(dir_ + ": package lacks tensor '" + printable(name) + "'");
  if (t->shape.size() != 1 || static_cast<size_t>(t->shape[0]) != n)
    fail(dir_ + ": tensor '" + printable(name) + "': expected shape [" + std::to_string(n) +
         "], found " + shape_str(t->shape));
  return reinterpret_cast<const float*>(resident_.data() + t->offset);
}

std::string Package::expert_file_path(int layer) const {
  return dir_ + "/" + manifest_.expert_files.at(layer);
}

uint64_t Package::resident_bytes() const {
  uint64_t total = 0;
  for (const auto& t : manifest_.resident) total += t.bytes;
  return total;
}

}  // namespace moeflux
