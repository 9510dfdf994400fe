// moeflux verify: checks every resident tensor and expert record of a package against the
// CRC-32C checksums of its manifest (format version 2 on). Exit 0 when all match; 1 naming the
// first corrupt tensor or record (file, layer, expert).
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "commands.hpp"
#include "core/error.hpp"
#include "formats/package_verify.hpp"

namespace moeflux::tool {

namespace {

// A progress bar on stderr when it is a terminal; nothing otherwise (logs stay clean).
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  ~ProgressBar() { finish(); }
  // `done` bytes checked out of `total`.
  void show(uint64_t done, uint64_t total) {
    if (!enabled_) return;
    const double s = std::chrono::duration<double>(Clock::now() - t0_).count();
    const double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
    const int width = 30;
    const int filled = static_cast<int>(frac * width + 0.5);
    std::fprintf(stderr, "\r[verify] [%.*s%*s] %3.0f%%  %s / %s  %.2f GB/s ", filled,
                 "##############################", width - filled, "", 100 * frac,
                 human_bytes(static_cast<double>(done)).c_str(),
                 human_bytes(static_cast<double>(total)).c_str(), done / 1e9 / std::max(s, 1e-9));
    std::fflush(stderr);
    shown_ = true;
  }
  void finish() {
    if (shown_) std::fputc('\n', stderr);
    shown_ = false;
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool enabled_;
  bool shown_ = false;
  Clock::time_point t0_ = Clock::now();
};

Runner add_verify(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "verify", "Check every tensor and expert record of a package against its checksums");
  struct Args {
    std::string dir;
    unsigned threads = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("PKG", a->dir, "Package directory")->required();
  cmd->add_option("-t,--threads", a->threads, "Checking threads (default: all, at most 8)")
      ->check(CLI::Range(1, 256));
  return [a] {
    const auto t0 = std::chrono::steady_clock::now();
    PackageOpenOptions po;
    po.verify_resident = false;  // checked below, with the rest
    po.warn_unverified = false;
    const Package pkg = Package::open(a->dir, po);
    const PackageManifest& m = pkg.manifest();
    if (!m.has_checksums())
      fail(a->dir + ": package format version " + std::to_string(m.version) +
           " has no checksums, nothing to verify (convert it again to add them)");
    const ModelConfig& c = pkg.config();
    const uint64_t resident = pkg.resident_bytes();
    const uint64_t records = static_cast<uint64_t>(c.num_experts) * c.num_moe_layers();
    const uint64_t experts = records * m.experts.record_bytes;
    ProgressBar bar(::isatty(STDERR_FILENO) == 1);
    try {
      verify_resident(pkg, a->threads,
                      [&](uint64_t done, uint64_t) { bar.show(done, resident + experts); });
      verify_expert_records(pkg, a->threads, [&](uint64_t done, uint64_t) {
        bar.show(resident + done, resident + experts);
      });
    } catch (...) {
      bar.finish();
      throw;
    }
    bar.finish();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf(
        "%s: ok: %zu resident tensors and %llu expert records (%s) match their checksums "
        "(%.1f s, %.2f GB/s)\n",
        a->dir.c_str(), m.resident.size(), static_cast<unsigned long long>(records),
        human_bytes(static_cast<double>(resident + experts)).c_str(), s,
        (resident + experts) / 1e9 / std::max(s, 1e-9));
    return 0;
  };
}

const CommandRegistration registration(22, add_verify);

}  // namespace

}  // namespace moeflux::tool
