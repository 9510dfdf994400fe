#include "experts/ceilings.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"

namespace moeflux {

namespace {

using Clock = std::chrono::steady_clock;

// Per reader thread: the destinations of reads cycle through this many bytes.
constexpr size_t kDestinationRingBytes = size_t{64} << 20;

int resolve_threads(int t) {
  return t > 0 ? t : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// Open descriptors, closed on scope exit.
struct Fds {
  std::vector<int> fds;
  ~Fds() {
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
  }
};

uint64_t file_size(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno(path);
  return static_cast<uint64_t>(st.st_size);
}

// One read: [off, off + len) of file `file`.
struct Block {
  int file;
  uint64_t off;
  size_t len;
};

// Blocks of block_bytes covering the files in order, up to `limit` bytes in all.
std::vector<Block> plan_blocks(const std::vector<uint64_t>& sizes, size_t block_bytes,
                               uint64_t limit) {
  std::vector<Block> blocks;
  uint64_t total = 0;
  for (size_t f = 0; f < sizes.size() && total < limit; ++f)
    for (uint64_t off = 0; off < sizes[f] && total < limit; off += block_bytes) {
      const size_t len = static_cast<size_t>(std::min<uint64_t>(block_bytes, sizes[f] - off));
      blocks.push_back({static_cast<int>(f), off, len});
      total += len;
    }
  return blocks;
}

struct RunResult {
  uint64_t bytes = 0;
  double seconds = 0;
  int error = 0;           // errno of the first failed read (0: none)
  std::string error_file;  // its path
};

// `threads` readers take blocks in order (wrapping around when `loop`) until every block is read
// (once, without `loop`), max_seconds have passed or max_bytes are read. Reads with O_DIRECT
// round the length up to 4096 (the file's end returns a short count).
RunResult read_blocks(const std::vector<int>& fds, const std::vector<std::string>& paths,
                      const std::vector<Block>& blocks, int threads, size_t block_bytes,
                      bool direct, bool loop, double max_seconds, uint64_t max_bytes) {
  RunResult r;
  if (blocks.empty()) return r;
  std::atomic<uint64_t> next{0}, bytes{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  const uint64_t n_blocks = blocks.size();
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  Clock::time_point t0, deadline;  // set before `go` is released
  auto reader = [&] {
    // Reads land in a ring of destinations larger than the caches, as expert records land in
    // a RAM cache: a single reused buffer would stay in L2 and flatter the copy out of the
    // page cache.
    const size_t slots = std::max<size_t>(1, kDestinationRingBytes / block_bytes);
    AlignedBuffer ring(slots * block_bytes, kExpertAlignment);
    std::memset(ring.data(), 0, ring.size());  // fault the pages in before the clock starts
    ready.fetch_add(1);
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    for (size_t k = 0;; ++k) {
      uint8_t* const dst = ring.data() + (k % slots) * block_bytes;
      if (stop.load(std::memory_order_relaxed)) return;
      const uint64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if ((!loop && i >= n_blocks) || Clock::now() >= deadline ||
          bytes.load(std::memory_order_relaxed) >= max_bytes)
        return;
      const Block& b = blocks[i % n_blocks];
      const size_t len =
          direct ? (b.len + kExpertAlignment - 1) / kExpertAlignment * kExpertAlignment : b.len;
      size_t done = 0;
      while (done < b.len) {
        const ssize_t n =
            ::pread(fds[b.file], dst + done, len - done, static_cast<off_t>(b.off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          std::lock_guard<std::mutex> lock(mu);
          if (!r.error) {
            r.error = n < 0 ? errno : EIO;
            r.error_file = paths[b.file];
          }
          stop.store(true);
          return;
        }
        done += static_cast<size_t>(n);
      }
      bytes.fetch_add(b.len, std::memory_order_relaxed);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(reader);
  while (ready.load() < threads) std::this_thread::yield();
  t0 = Clock::now();
  deadline =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(max_seconds));
  go.store(true, std::memory_order_release);
  for (auto& t : pool) t.join();
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.bytes = bytes.load();
  return r;
}

Ceiling finish(uint64_t bytes, double seconds, int threads, std::string note) {
  Ceiling c;
  c.measured = bytes > 0 && seconds > 0;
  c.bytes = bytes;
  c.seconds = seconds;
  c.gb_per_s = c.measured ? bytes / seconds / 1e9 : 0;
  c.threads = threads;
  c.note = std::move(note);
  if (!c.measured && c.note.empty()) c.note = "nothing to read";
  return c;
}

// MemAvailable from /proc/meminfo (0 if unknown).
uint64_t mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

// Fraction of the planned blocks' pages resident in the page cache (mincore), or -1.
double cached_fraction(const std::vector<int>& fds, const std::vector<uint64_t>& sizes,
                       uint64_t limit) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  uint64_t pages = 0, resident = 0, left = limit;
  for (size_t f = 0; f < fds.size() && left > 0; ++f) {
    const uint64_t len = std::min(sizes[f], left);
    left -= len;
    if (len == 0) continue;
    void* p = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fds[f], 0);
    if (p == MAP_FAILED) return -1;
    std::vector<unsigned char> vec((len + page - 1) / page);
    const bool ok = ::mincore(p, len, vec.data()) == 0;
    ::munmap(p, len);
    if (!ok) return -1;
    pages += vec.size();
    for (unsigned char v : vec) resident += v & 1;
  }
  return pages ? double(resident) / double(pages) : -1;
}

std::string gib(double b) {
  char buf[32];
  if (b >= double(uint64_t{1} << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(uint64_t{1} << 30));
  else
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(uint64_t{1} << 20));
  return buf;
}

}  // namespace

std::vector<std::string> package_expert_files(const Package& pkg) {
  std::vector<std::string> files;
  for (int l = 0; l < pkg.config().num_layers; ++l)
    if (pkg.config().layer_is_moe[l]) files.push_back(pkg.expert_file_path(l));
  return files;
}

Ceiling measure_direct_read(const std::vector<std::string>& files, const CeilingOptions& o) {
  MF_ASSERT(o.block_bytes > 0 && o.block_bytes % kExpertAlignment == 0);
  const int threads = resolve_threads(o.threads);
  Fds fds;
  std::vector<uint64_t> sizes;
  for (const std::string& path : files) {
    int fd;
    do fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      if (errno == EINVAL)
        return finish(0, 0, threads, path + ": O_DIRECT refused by the file system (EINVAL)");
      throw_errno(path);
    }
    fds.fds.push_back(fd);
    sizes.push_back(file_size(fd, path));
  }
  const std::vector<Block> blocks = plan_blocks(sizes, o.block_bytes, o.max_bytes);
  const RunResult r = read_blocks(fds.fds, files, blocks, threads, o.block_bytes,
                                  /*direct=*/true, /*loop=*/false, o.max_seconds, o.max_bytes);
  if (r.error == EINVAL)
    return finish(0, 0, threads,
                  r.error_file + ": O_DIRECT reads refused by the file system (EINVAL)");
  if (r.error) {
    errno = r.error;
    throw_errno(r.error_file + ": read");
  }
  char note[96];
  std::snprintf(note, sizeof note, "O_DIRECT, %zu KiB reads, %s of %zu files", o.block_bytes >> 10,
                gib(double(r.bytes)).c_str(), files.size());
  return finish(r.bytes, r.seconds, threads, note);
}

Ceiling measure_page_cache_read(const std::vector<std::string>& files, const CeilingOptions& o) {
  MF_ASSERT(o.block_bytes > 0);
  const int threads = resolve_threads(o.threads);
  Fds fds;
  std::vector<uint64_t> sizes;
  for (const std::string& path : files) {
    int fd;
    do fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) throw_errno(path);
    fds.fds.push_back(fd);
    sizes.push_back(file_size(fd, path));
  }
  // The set must fit the page cache comfortably, or the "warm" reads go to the device.
  uint64_t set = o.cache_set_bytes;
  if (const uint64_t avail = mem_available()) set = std::min(set, avail / 2);
  const std::vector<Block> blocks = plan_blocks(sizes, o.block_bytes, set);
  uint64_t set_bytes = 0;
  for (const Block& b : blocks) set_bytes += b.len;
  // Warm: read the set once (untimed beyond its own bound of a full pass).
  RunResult w =
      read_blocks(fds.fds, files, blocks, threads, o.block_bytes, false, false, 1e9, UINT64_MAX);
  if (w.error) {
    errno = w.error;
    throw_errno(w.error_file + ": read");
  }
  const RunResult r = read_blocks(fds.fds, files, blocks, threads, o.block_bytes, false,
                                  /*loop=*/true, o.max_seconds, o.max_bytes);
  if (r.error) {
    errno = r.error;
    throw_errno(r.error_file + ": read");
  }
  const double cached = cached_fraction(fds.fds, sizes, set_bytes);
  char note[128];
  if (cached >= 0)
    std::snprintf(note, sizeof note, "%s set, %.0f%% resident in the page cache after the run",
                  gib(double(set_bytes)).c_str(), 100 * cached);
  else
    std::snprintf(note, sizeof note, "%s set", gib(double(set_bytes)).c_str());
  return finish(r.bytes, r.seconds, threads, note);
}

Ceiling measure_memcpy(const CeilingOptions& o) {
  const int threads = resolve_threads(o.threads);
  const size_t n = std::max<size_t>(o.copy_buffer_bytes / 64 * 64, 64);
  const size_t chunk = std::min<size_t>(n, size_t{8} << 20);
  std::atomic<uint64_t> bytes{0};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  Clock::time_point t0;
  auto copier = [&] {
    AlignedBuffer src(n, 64), dst(n, 64);
    std::memset(src.data(), 1, n);  // fault every page in before the clock starts
    std::memset(dst.data(), 0, n);
    ready.fetch_add(1);
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(o.max_seconds));
    for (size_t off = 0;; off = (off + chunk) % n) {
      if (Clock::now() >= deadline || bytes.load(std::memory_order_relaxed) >= o.max_bytes) break;
      const size_t len = std::min(chunk, n - off);
      std::memcpy(dst.data() + off, src.data() + off, len);
      // The copy must happen: the destination escapes and memory is clobbered.
      asm volatile("" : : "r"(dst.data()) : "memory");
      bytes.fetch_add(len, std::memory_order_relaxed);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(copier);
  while (ready.load() < threads) std::this_thread::yield();
  t0 = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& t : pool) t.join();
  const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
  char note[96];
  std::snprintf(note, sizeof note, "%s per thread, bytes copied (read + write each)",
                gib(double(n)).c_str());
  return finish(bytes.load(), sec, threads, note);
}

std::string describe(const Ceiling& c) {
  if (!c.measured) return "not measured: " + c.note;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%.3g GB/s (%.3g GB in %.2f s, %d thread%s; %s)", c.gb_per_s,
                c.bytes / 1e9, c.seconds, c.threads, c.threads == 1 ? "" : "s", c.note.c_str());
  return buf;
}

}  // namespace moeflux
