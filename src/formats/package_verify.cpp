#include "formats/package_verify.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "core/crc32c.hpp"
#include "core/error.hpp"

namespace moeflux {

namespace {

std::string hex32(uint32_t x) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", x);
  return buf;
}

// Items 0..n-1 checked by `threads` workers; check(i) returns "" or the item's error. Items are
// claimed in index order, and a worker that finds an error stops every worker from claiming
// more; every item claimed before the failing one is still finished, so the error returned is
// that of the lowest failing index: the first, as a sequential check would report it.
// progress(done, total) runs on the calling thread while the workers run, and once at the end.
std::string check_all(size_t n, unsigned threads, const std::function<std::string(size_t)>& check,
                      const std::function<uint64_t(size_t)>& bytes,
                      const VerifyProgress& progress) {
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) total += bytes(i);
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> done{0};
  std::mutex mu;
  std::condition_variable finished_cv;
  size_t finished = 0, bad_index = n;  // guarded by mu
  std::string bad;                     // guarded by mu
  auto worker = [&] {
    while (!stop.load(std::memory_order_relaxed)) {
      const size_t i = next.fetch_add(1);
      if (i >= n) break;
      std::string err;
      try {
        err = check(i);
      } catch (const std::exception& e) {
        err = e.what();
      }
      if (!err.empty()) {
        std::lock_guard<std::mutex> lock(mu);
        if (i < bad_index) {
          bad_index = i;
          bad = std::move(err);
        }
        stop = true;
      }
      done.fetch_add(bytes(i), std::memory_order_relaxed);
    }
    std::lock_guard<std::mutex> lock(mu);
    ++finished;
    finished_cv.notify_all();
  };
  if (threads == 0) threads = std::min(8u, std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<unsigned>(std::max<size_t>(1, std::min<size_t>(threads, n)));
  if (threads == 1 && !progress) {
    worker();
    return bad;
  }
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker);
  {
    std::unique_lock<std::mutex> lock(mu);
    while (finished < threads) {
      finished_cv.wait_for(lock, std::chrono::milliseconds(250));
      if (progress && finished < threads) {
        lock.unlock();
        progress(done.load(), total);
        lock.lock();
      }
    }
  }
  for (std::thread& t : pool) t.join();
  if (progress) progress(done.load(), total);
  return bad;
}

// A layer file opened for checking: O_DIRECT where the filesystem takes it, else buffered
// (and its pages dropped after each read, for the same reason).
struct CheckFile {
  int fd = -1;
  bool direct = false;
  explicit CheckFile(const std::string& path) {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    direct = fd >= 0;
    if (fd < 0) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw_errno(path);
  }
  ~CheckFile() {
    if (fd >= 0) ::close(fd);
  }
  CheckFile(CheckFile&& o) noexcept : fd(std::exchange(o.fd, -1)), direct(o.direct) {}
  CheckFile(const CheckFile&) = delete;
};

// Reads [off, off + n) of `fd` into dst completely; returns "" or an error.
std::string read_fully(const CheckFile& f, uint8_t* dst, size_t n, uint64_t off,
                       const std::string& what) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(f.fd, dst + got, n - got, static_cast<off_t>(off + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return what + ": read failed: " + std::strerror(errno);
    }
    if (r == 0) return what + ": truncated";
    got += static_cast<size_t>(r);
  }
  if (!f.direct)
    (void)::posix_fadvise(f.fd, static_cast<off_t>(off), static_cast<off_t>(n),
                          POSIX_FADV_DONTNEED);
  return "";
}

}  // namespace

std::string corrupt_record_error(const std::string& file, int layer, int expert, uint32_t found,
                                 uint32_t expected) {
  return file + ": expert " + std::to_string(expert) + " of layer " + std::to_string(layer) +
         " is corrupt (crc32c " + hex32(found) + ", the manifest says " + hex32(expected) + ")";
}

void verify_resident(const Package& pkg, unsigned threads, const VerifyProgress& progress) {
  const PackageManifest& m = pkg.manifest();
  if (!m.has_checksums()) return;
  const auto& tensors = m.resident;
  // Small packages: one thread (starting threads would cost more than the check).
  if (threads == 0 && pkg.resident_bytes() < (uint64_t{32} << 20)) threads = 1;
  const std::string file = pkg.dir() + "/" + kResidentName;
  const std::string err = check_all(
      tensors.size(), threads,
      [&](size_t i) -> std::string {
        const ResidentTensor& t = tensors[i];
        const uint32_t crc = crc32c(pkg.resident_data(t), t.bytes);
        if (crc == t.crc32c) return "";
        return file + ": tensor '" + printable(t.name) + "' is corrupt (crc32c " + hex32(crc) +
               ", the manifest says " + hex32(t.crc32c) + ")";
      },
      [&](size_t i) { return tensors[i].bytes; }, progress);
  if (!err.empty()) fail(err);
}

void verify_expert_records(const Package& pkg, unsigned threads, const VerifyProgress& progress) {
  const PackageManifest& m = pkg.manifest();
  if (!m.has_checksums()) return;
  const ModelConfig& c = m.config;
  const size_t rb = m.experts.record_bytes;
  // Work items: runs of consecutive records of one layer, about 16 MiB each.
  const int per_item = static_cast<int>(std::max<size_t>(1, (size_t{16} << 20) / rb));
  struct Item {
    int layer, first, count;
  };
  std::vector<Item> items;
  std::vector<CheckFile> files;
  std::vector<int> file_of(c.num_layers, -1);
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.layer_is_moe[l]) continue;
    file_of[l] = static_cast<int>(files.size());
    files.emplace_back(pkg.expert_file_path(l));
    for (int e = 0; e < c.num_experts; e += per_item)
      items.push_back({l, e, std::min(per_item, c.num_experts - e)});
  }
  std::mutex buffers_mu;
  std::vector<AlignedBuffer> buffers;  // free read buffers, one per worker at most
  const std::string err = check_all(
      items.size(), threads,
      [&](size_t i) -> std::string {
        const Item& it = items[i];
        AlignedBuffer buf;
        {
          std::lock_guard<std::mutex> lock(buffers_mu);
          if (!buffers.empty()) {
            buf = std::move(buffers.back());
            buffers.pop_back();
          }
        }
        if (buf.size() == 0) buf = AlignedBuffer(rb * per_item, kExpertAlignment);
        const std::string path = pkg.expert_file_path(it.layer);
        std::string result = read_fully(
            files[file_of[it.layer]], buf.data(), rb * it.count, rb * it.first,
            path + ": experts " + std::to_string(it.first) + ".." +
                std::to_string(it.first + it.count - 1) + " of layer " + std::to_string(it.layer));
        for (int k = 0; k < it.count && result.empty(); ++k) {
          const int e = it.first + k;
          const uint32_t want = m.record_crc32c[it.layer][e];
          const uint32_t got = crc32c(buf.data() + rb * k, rb);
          if (got != want) result = corrupt_record_error(path, it.layer, e, got, want);
        }
        std::lock_guard<std::mutex> lock(buffers_mu);
        buffers.push_back(std::move(buf));
        return result;
      },
      [&](size_t i) { return static_cast<uint64_t>(items[i].count) * rb; }, progress);
  if (!err.empty()) fail(err);
}

}  // namespace moeflux
