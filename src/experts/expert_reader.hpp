// Asynchronous reads of whole expert records from a package's layer files.
//
// The streaming engine (cache tiers, prefetch) issues ReadOps and waits only for the ones it
// needs, so reads overlap with compute. A ReadOp is owned by its submitter and must stay alive
// (not moved) until it has completed (state != Pending) — wait() or done() tells.
//
// Memory ordering: a reader writes the record into op.dst (and op.error on failure) and then
// stores op.state with release semantics; it never touches the op again after that store. A
// submitter that loads state != Pending with acquire semantics (done(), wait()) sees the whole
// record (or the error). The destination buffer belongs to the submitter, but the reader (or
// the kernel) writes into it while the op is Pending: leave it alone until then.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

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

const char* io_mode_name(IoMode m);        // "page-cache" | "direct"
const char* io_backend_name(IoBackend b);  // "threads" | "io_uring"
// The inverses of the above (command-line values); throw moeflux::Error naming the accepted
// values.
IoMode parse_io_mode(const std::string& s);
IoBackend parse_io_backend(const std::string& s);

struct ReadOp {
  enum State : int { Pending = 0, Done = 1, Failed = 2 };

  int layer = 0;           // model layer index of a MoE layer (its file)
  int expert = 0;          // record index in the file
  uint8_t* dst = nullptr;  // record_bytes, 4096-aligned
  std::atomic<int> state{Pending};
  std::string error;  // set before state becomes Failed: "<file>: <what went wrong>"
};

// True once `op` has completed (Done or Failed); an acquire load, so the record (or the error)
// is visible when it returns true.
inline bool done(const ReadOp& op) {
  return op.state.load(std::memory_order_acquire) != ReadOp::Pending;
}

struct ReaderStats {
  uint64_t reads = 0;       // records read
  uint64_t bytes = 0;       // bytes read
  double busy_seconds = 0;  // summed wall time of individual reads (for achieved GB/s)
  uint64_t verified = 0;      // records checked against their checksum
  double verify_seconds = 0;  // summed time of those checks (on the reader threads)
};

class ExpertReader {
 public:
  virtual ~ExpertReader() = default;
  // Queues the reads and returns at once. Each op completes independently. Thread-safe.
  // submit() resets each op (state = Pending, error cleared), so a completed op may be
  // submitted again; an op must not be submitted while it is still Pending.
  // Destroying the reader completes every op it was given: reads in progress finish, queued
  // ones become Failed ("reader closed").
  virtual void submit(std::span<ReadOp* const> ops) = 0;
  // Blocks (sleeps) until `op` has completed; throws moeflux::Error(op.error) if it failed.
  // Thread-safe; any number of threads may wait on different ops.
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
  size_t threads = 8;   // Threads backend: reads in flight
  unsigned depth = 64;  // IoUring backend: submission queue depth (1..32768)
  // Check every record read against the package's CRC-32C (packages of format version 2 on):
  // on the reader threads, as it lands; a mismatch fails the op with an error naming the file,
  // layer and expert. (The threads backend checks on its workers, in parallel; io_uring on its
  // one reaper thread.)
  bool verify = true;
};

// The files a reader reads from: one per model layer ("" for a dense layer, which has none),
// each holding num_experts records of record_bytes (a multiple of 4096) back to back. Owns the
// file descriptors; move-only.
class LayerFiles {
 public:
  // Opens every non-empty path read-only (with O_DIRECT when mode is Direct). Throws
  // moeflux::Error naming the file: "<file>: O_DIRECT not supported by this filesystem (use
  // --io page-cache)" where the filesystem refuses O_DIRECT, else "<file>: <strerror>".
  LayerFiles(std::vector<std::string> paths, size_t record_bytes, int num_experts, IoMode mode);
  // Every MoE layer file of the package; with `verify`, the package's record checksums (if it
  // has them) for verify().
  static LayerFiles from_package(const Package& pkg, IoMode mode, bool verify = false);
  ~LayerFiles();
  LayerFiles(LayerFiles&& o) noexcept;
  LayerFiles& operator=(LayerFiles&&) = delete;
  LayerFiles(const LayerFiles&) = delete;
  LayerFiles& operator=(const LayerFiles&) = delete;

  int num_layers() const { return static_cast<int>(fds_.size()); }
  int num_experts() const { return num_experts_; }
  size_t record_bytes() const { return record_bytes_; }
  IoMode mode() const { return mode_; }
  int fd(int layer) const { return fds_[layer]; }
  const std::string& path(int layer) const { return paths_[layer]; }
  // Byte offset of record `expert` in its layer file.
  uint64_t offset(int expert) const { return static_cast<uint64_t>(expert) * record_bytes_; }

  // Internal invariants of a submitted op (MF_ASSERT): a MoE layer, an expert in range, a
  // 4096-aligned destination.
  void check(const ReadOp& op) const;
  // The messages every backend uses for a failed read of `op` ("<file>: ...").
  std::string truncated_error(const ReadOp& op) const;
  std::string errno_error(const ReadOp& op, int err) const;
  std::string closed_error(const ReadOp& op) const;

  // Expected CRC-32C of each record, [layer][expert] (empty: reads are not checked).
  void set_checksums(std::vector<std::vector<uint32_t>> crcs) { crcs_ = std::move(crcs); }
  bool verifies() const { return !crcs_.empty(); }
  // After a complete read of op's record into op.dst: "" if it matches its checksum (or nothing
  // is checked), else the error naming file, layer and expert.
  std::string verify(const ReadOp& op) const;

 private:
  void close_all();
  std::vector<int> fds_;  // -1 for dense layers
  std::vector<std::string> paths_;
  std::vector<std::vector<uint32_t>> crcs_;
  size_t record_bytes_ = 0;
  int num_experts_ = 0;
  IoMode mode_ = IoMode::PageCache;
};

// Completion and waiting for ReadOps, shared by the reader implementations: a completer
// publishes an op's result with complete(); wait() sleeps on a condition variable until the
// op's state changes. The state is stored with the mutex held, so a waiter that has checked
// the state under the mutex cannot miss the notification; the completer touches only the
// mutex and the condition variable (owned by this object, which outlives every op it
// completes) after the store.
class ReadCompletion {
 public:
  // Marks `op` Done (error empty) or Failed (error stored first), wakes its waiters.
  void complete(ReadOp& op, std::string error);
  // Blocks until op is not Pending; throws moeflux::Error(op.error) if it Failed.
  void wait(ReadOp& op);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

// Opens every MoE layer file of the package (O_DIRECT when asked; falls back with a clear
// error if the filesystem refuses it). Throws moeflux::Error.
std::unique_ptr<ExpertReader> make_expert_reader(const Package& pkg, const ReaderOptions& opts);
// The same over files opened by the caller (benchmarks, tests); the reader takes them over.
// Their mode (files.mode()) applies; opts.mode is not used.
std::unique_ptr<ExpertReader> make_expert_reader(LayerFiles files, const ReaderOptions& opts);

// The backends (make_expert_reader picks one by opts.backend).
std::unique_ptr<ExpertReader> make_pread_reader(LayerFiles files, size_t threads);
// Throws moeflux::Error("io_uring unavailable (<strerror>): use --io-backend threads") where
// the kernel refuses io_uring (ENOSYS, EPERM under seccomp, ...).
std::unique_ptr<ExpertReader> make_uring_reader(LayerFiles files, unsigned depth);

}  // namespace moeflux
