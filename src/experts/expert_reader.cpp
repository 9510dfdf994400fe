// Names, option parsing, the layer files, completion/waiting and the backend choice shared by
// the expert readers (pread_reader.cpp, uring_reader.cpp).
#include "experts/expert_reader.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <utility>

#include "core/crc32c.hpp"
#include "core/error.hpp"
#include "formats/package_verify.hpp"

namespace moeflux {

const char* io_mode_name(IoMode m) {
  switch (m) {
    case IoMode::PageCache:
      return "page-cache";
    case IoMode::Direct:
      return "direct";
  }
  return "?";
}

const char* io_backend_name(IoBackend b) {
  switch (b) {
    case IoBackend::Threads:
      return "threads";
    case IoBackend::IoUring:
      return "io_uring";
  }
  return "?";
}

IoMode parse_io_mode(const std::string& s) {
  if (s == "page-cache") return IoMode::PageCache;
  if (s == "direct") return IoMode::Direct;
  fail("unknown I/O mode '" + s + "' (accepted: page-cache, direct)");
}

IoBackend parse_io_backend(const std::string& s) {
  if (s == "threads") return IoBackend::Threads;
  if (s == "io_uring") return IoBackend::IoUring;
  fail("unknown I/O backend '" + s + "' (accepted: threads, io_uring)");
}

// ---- LayerFiles ----

LayerFiles::LayerFiles(std::vector<std::string> paths, size_t record_bytes, int num_experts,
                       IoMode mode)
    : paths_(std::move(paths)),
      record_bytes_(record_bytes),
      num_experts_(num_experts),
      mode_(mode) {
  if (record_bytes_ == 0 || record_bytes_ % kExpertAlignment != 0)
    fail("expert record size " + std::to_string(record_bytes_) + " is not a positive multiple of " +
         std::to_string(kExpertAlignment));
  if (num_experts_ <= 0) fail("expert files need at least one expert");
  fds_.assign(paths_.size(), -1);
  const int flags = O_RDONLY | O_CLOEXEC | (mode_ == IoMode::Direct ? O_DIRECT : 0);
  for (size_t l = 0; l < paths_.size(); ++l) {
    if (paths_[l].empty()) continue;
    int fd;
    do fd = ::open(paths_[l].c_str(), flags);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      const int e = errno;
      close_all();
      if (e == EINVAL && mode_ == IoMode::Direct)
        fail(paths_[l] + ": O_DIRECT not supported by this filesystem (use --io page-cache)");
      fail(paths_[l] + ": " + std::strerror(e));
    }
    fds_[l] = fd;
  }
}

LayerFiles LayerFiles::from_package(const Package& pkg, IoMode mode, bool verify) {
  const int n = pkg.config().num_layers;
  std::vector<std::string> paths(n);
  for (int l = 0; l < n; ++l)
    if (pkg.config().layer_is_moe[l]) paths[l] = pkg.expert_file_path(l);
  LayerFiles files(std::move(paths), pkg.manifest().experts.record_bytes, pkg.config().num_experts,
                   mode);
  if (verify && pkg.manifest().has_checksums()) files.set_checksums(pkg.manifest().record_crc32c);
  return files;
}

std::string LayerFiles::verify(const ReadOp& op) const {
  if (crcs_.empty()) return "";
  const uint32_t want = crcs_[op.layer][op.expert];
  const uint32_t got = crc32c(op.dst, record_bytes_);
  if (got == want) return "";
  return corrupt_record_error(paths_[op.layer], op.layer, op.expert, got, want);
}

LayerFiles::~LayerFiles() {
  close_all();
}

LayerFiles::LayerFiles(LayerFiles&& o) noexcept
    : fds_(std::move(o.fds_)),
      paths_(std::move(o.paths_)),
      record_bytes_(o.record_bytes_),
      num_experts_(o.num_experts_),
      mode_(o.mode_) {
  crcs_ = std::move(o.crcs_);
  o.fds_.clear();  // the moved-from object owns no descriptor
}

void LayerFiles::close_all() {
  for (int& fd : fds_)
    if (fd >= 0) ::close(std::exchange(fd, -1));
}

void LayerFiles::check(const ReadOp& op) const {
  MF_ASSERT(op.layer >= 0 && op.layer < num_layers() && fds_[op.layer] >= 0);
  MF_ASSERT(op.expert >= 0 && op.expert < num_experts_);
  MF_ASSERT(op.dst != nullptr && reinterpret_cast<uintptr_t>(op.dst) % kExpertAlignment == 0);
}

std::string LayerFiles::truncated_error(const ReadOp& op) const {
  return paths_[op.layer] + ": truncated: expert " + std::to_string(op.expert) + " of layer " +
         std::to_string(op.layer) + " ends past the end of the file";
}

std::string LayerFiles::errno_error(const ReadOp& op, int err) const {
  return paths_[op.layer] + ": read of expert " + std::to_string(op.expert) + " of layer " +
         std::to_string(op.layer) + " failed: " + std::strerror(err);
}

std::string LayerFiles::closed_error(const ReadOp& op) const {
  return paths_[op.layer] + ": reader closed before expert " + std::to_string(op.expert) +
         " of layer " + std::to_string(op.layer) + " was read";
}

// ---- ReadCompletion ----

void ReadCompletion::complete(ReadOp& op, std::string error) {
  const bool failed = !error.empty();
  if (failed) op.error = std::move(error);  // published by the release store below
  {
    std::lock_guard<std::mutex> lock(mu_);
    op.state.store(failed ? ReadOp::Failed : ReadOp::Done, std::memory_order_release);
  }
  // `op` may be gone from here on (its waiter may have seen the state and returned).
  cv_.notify_all();
}

void ReadCompletion::wait(ReadOp& op) {
  if (op.state.load(std::memory_order_acquire) == ReadOp::Pending) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return op.state.load(std::memory_order_acquire) != ReadOp::Pending; });
  }
  if (op.state.load(std::memory_order_acquire) == ReadOp::Failed) fail(op.error);
}

// ---- the backend choice ----

std::unique_ptr<ExpertReader> make_expert_reader(LayerFiles files, const ReaderOptions& opts) {
  switch (opts.backend) {
    case IoBackend::Threads:
      return make_pread_reader(std::move(files), opts.threads);
    case IoBackend::IoUring:
      return make_uring_reader(std::move(files), opts.depth);
  }
  fail("unknown I/O backend");
}

std::unique_ptr<ExpertReader> make_expert_reader(const Package& pkg, const ReaderOptions& opts) {
  return make_expert_reader(LayerFiles::from_package(pkg, opts.mode, opts.verify), opts);
}

}  // namespace moeflux
