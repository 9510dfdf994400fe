// Asynchronous reads of whole expert records from a package's layer files.
//
// The streaming engine (cache tiers, prefetch) issues ReadOps and waits only for the ones it
// needs, so reads overlap with compute. A ReadOp is owned by its submitter and must stay alive
// (not moved) until it has completed (state != Pending) — wait() or done() tells.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "formats/package.hpp"

namespace moeflux {

enum class IoMode {
  PageCache,  // buffered pread: the OS page cache is a tier below ours
  Direct,     // O_DIRECT: every miss goes to the device (records are 4096-aligned)
};
enum class IoBackend {
  Threads,  // a pool of threads doing pread(2)
  IoUring,  // liburing, one ring, a reaper thread
};

const char* io_mode_name(IoMode m);
const char* io_backend_name(IoBackend b);

struct ReadOp {
  enum State : int { Pending = 0, Done = 1, Failed = 2 };

  int layer = 0;           // MoE layer (its file)
  int expert = 0;          // record index in the file
  uint8_t* dst = nullptr;  // record_bytes, 4096-aligned
  std::atomic<int> state{Pending};
  std::string error;  // set before state becomes Failed: "<file>: <what went wrong>"
};

struct ReaderStats {
  uint64_t reads = 0;      // records read
  uint64_t bytes = 0;      // bytes read
  double busy_seconds = 0; // summed wall time of individual reads (for achieved GB/s)
};

class ExpertReader {
 public:
  virtual ~ExpertReader() = default;
  // Queues the reads and returns at once. Each op completes independently.
  virtual void submit(std::span<ReadOp* const> ops) = 0;
  // Blocks until `op` has completed; throws moeflux::Error(op.error) if it failed.
  virtual void wait(ReadOp& op) = 0;
  virtual const char* describe() const = 0;  // e.g. "io_uring, O_DIRECT, depth 64"
  virtual ReaderStats stats() const = 0;
  size_t record_bytes() const { return record_bytes_; }

 protected:
  size_t record_bytes_ = 0;
};

struct ReaderOptions {
  IoMode mode = IoMode::PageCache;
  IoBackend backend = IoBackend::Threads;
  size_t threads = 8;      // Threads backend: reads in flight
  unsigned depth = 64;     // IoUring backend: submission queue depth
};

// Opens every MoE layer file of the package (O_DIRECT when asked; falls back with a clear
// error if the filesystem refuses it). Throws moeflux::Error.
std::unique_ptr<ExpertReader> make_expert_reader(const Package& pkg, const ReaderOptions& opts);

}  // namespace moeflux
