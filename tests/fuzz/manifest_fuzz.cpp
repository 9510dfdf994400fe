// libFuzzer target: Package::open on an arbitrary manifest.json next to the real resident.bin and
// expert files of the bundled model (linked into a scratch directory at start-up).
//
// Any input must either open cleanly, after which every resident tensor's bytes (data, scales,
// biases of its format and shape) lie inside resident.bin and every MoE layer's expert file is
// the one the writer names and exactly num_experts * record_bytes long — or throw
// moeflux::Error with a one-line message. Anything else (crash, sanitizer report, other
// exception, assertion, a view outside the mapping) is a finding.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.hpp"
#include "formats/package.hpp"

namespace fs = std::filesystem;

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "manifest_fuzz: %s\n", what.c_str());
  std::abort();
}

// A scratch package directory whose data files are links to the bundled model's (kept for the
// life of the process: the string is never destroyed, so the exit handler may still use it).
const std::string& package_dir() {
  static const std::string* const dir = [] {
    const fs::path src = fs::path(MOEFLUX_MODEL_DIR);
    const fs::path d =
        fs::temp_directory_path() / ("moeflux-manifest-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d / "experts");
    fs::create_symlink(fs::absolute(src / "resident.bin"), d / "resident.bin");
    for (const auto& e : fs::directory_iterator(src / "experts"))
      fs::create_symlink(fs::absolute(e.path()), d / "experts" / e.path().filename());
    auto* s = new std::string(d.string());
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(package_dir(), ec);
    });
    return s;
  }();
  return *dir;
}

void check_inside(const uint8_t* p, size_t n, const uint8_t* begin, const uint8_t* end,
                  const std::string& what) {
  if (n == 0) return;
  if (p < begin || p > end || n > static_cast<size_t>(end - p))
    finding(what + " outside resident.bin");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = package_dir();
  {
    std::ofstream out(dir + "/manifest.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out.flush()) finding("cannot write manifest.json");
  }
  try {
    const moeflux::Package pkg = moeflux::Package::open(dir);
    const moeflux::PackageManifest& m = pkg.manifest();
    std::ifstream res(dir + "/resident.bin", std::ios::binary | std::ios::ate);
    const auto res_size = static_cast<uint64_t>(res.tellg());
    // Views the runtime would bind must stay inside the file.
    std::vector<uint8_t> probe(1);
    for (const moeflux::ResidentTensor& t : m.resident) {
      if (t.offset > res_size || t.bytes > res_size - t.offset)
        finding("tensor '" + t.name + "' past the file");
      if (t.shape.size() == 2) {
        const moeflux::MatrixView v =
            pkg.matrix(t.name, static_cast<size_t>(t.shape[0]), static_cast<size_t>(t.shape[1]));
        const moeflux::MatrixLayout l = moeflux::matrix_layout(t.fmt, v.rows, v.cols);
        if (l.total_bytes != t.bytes)
          finding("tensor '" + t.name + "' layout disagrees with its bytes");
        const uint8_t* base = v.data - l.data_offset;
        const uint8_t* end = base + t.bytes;
        check_inside(v.data, l.data_bytes, base, end, t.name + " data");
        if (v.scales) check_inside(v.scales, l.scales_bytes, base, end, t.name + " scales");
        if (v.biases) check_inside(v.biases, l.biases_bytes, base, end, t.name + " biases");
      } else {
        (void)pkg.vector(t.name, static_cast<size_t>(t.shape.at(0)));
      }
    }
    for (int l = 0; l < m.config.num_layers; ++l) {
      if (!m.config.layer_is_moe[l]) continue;
      if (m.expert_files[l] != moeflux::expert_file_name(l))
        finding("expert file name '" + m.expert_files[l] + "'");
      const uint64_t want = static_cast<uint64_t>(m.config.num_experts) * m.experts.record_bytes;
      if (fs::file_size(pkg.expert_file_path(l)) != want) finding("expert file size");
    }
  } catch (const moeflux::Error& e) {
    const std::string msg = e.what();
    if (msg.empty() || msg.find('\n') != std::string::npos)
      finding("error message not one line: " + msg);
  }
  return 0;
}
