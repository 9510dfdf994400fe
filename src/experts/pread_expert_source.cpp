#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>

#include "core/error.hpp"
#include "experts/expert_source.hpp"

namespace moeflux {

namespace {

class PreadExpertSource final : public ExpertSource {
 public:
  PreadExpertSource(const Package& pkg, size_t io_threads)
      : record_bytes_(pkg.manifest().experts.record_bytes),
        num_experts_(pkg.config().num_experts),
        pool_(io_threads, /*spin=*/false) {
    const int n = pkg.config().num_layers;
    fds_.assign(n, -1);
    paths_.resize(n);
    for (int l = 0; l < n; ++l) {
      if (!pkg.config().layer_is_moe[l]) continue;
      paths_[l] = pkg.expert_file_path(l);
      fds_[l] = ::open(paths_[l].c_str(), O_RDONLY | O_CLOEXEC);
      if (fds_[l] < 0) {
        const int e = errno;
        close_all();
        errno = e;
        throw_errno(paths_[l]);
      }
    }
  }
  ~PreadExpertSource() override { close_all(); }

  void read(int layer, std::span<const int> experts, std::span<uint8_t* const> dst) override {
    MF_ASSERT(experts.size() == dst.size());
    MF_ASSERT(layer >= 0 && layer < static_cast<int>(fds_.size()) && fds_[layer] >= 0);
    const auto t0 = std::chrono::steady_clock::now();
    std::mutex mu;
    std::string first_error;
    pool_.parallel_for(experts.size(), [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) {
        const int e = experts[i];
        MF_ASSERT(e >= 0 && e < num_experts_);
        const std::string err = read_record(layer, e, dst[i]);
        if (!err.empty()) {
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.empty()) first_error = err;
        }
      }
    });
    stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!first_error.empty()) fail(first_error);
    stats_.records += experts.size();
    stats_.bytes += experts.size() * record_bytes_;
  }

  const ExpertReadStats& stats() const override { return stats_; }

 private:
  // Returns "" on success, else the error message (threads must not throw).
  std::string read_record(int layer, int expert, uint8_t* dst) const {
    const off_t base = static_cast<off_t>(expert) * static_cast<off_t>(record_bytes_);
    size_t done = 0;
    while (done < record_bytes_) {
      const ssize_t n = ::pread(fds_[layer], dst + done, record_bytes_ - done,
                                base + static_cast<off_t>(done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return paths_[layer] + ": read of expert " + std::to_string(expert) +
               " failed: " + std::strerror(errno);
      }
      if (n == 0)
        return paths_[layer] + ": truncated: expert " + std::to_string(expert) +
               " ends past the end of the file";
      done += static_cast<size_t>(n);
    }
    return "";
  }

  void close_all() {
    for (int& fd : fds_)
      if (fd >= 0) ::close(std::exchange(fd, -1));
  }

  size_t record_bytes_;
  int num_experts_;
  std::vector<int> fds_;
  std::vector<std::string> paths_;
  ThreadPool pool_;
  ExpertReadStats stats_;
};

}  // namespace

std::unique_ptr<ExpertSource> make_pread_expert_source(const Package& pkg, size_t io_threads) {
  return std::make_unique<PreadExpertSource>(pkg, io_threads);
}

}  // namespace moeflux
