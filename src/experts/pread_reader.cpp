// The Threads backend of ExpertReader: a FIFO of ReadOp* served by a fixed set of worker
// threads, each doing one whole-record pread(2) at a time and then checking the record against
// its checksum (when the files carry them), so checks run in parallel with other reads.
//
// Ownership: the submitter owns every ReadOp and its destination; the reader holds a pointer to
// a queued op from submit() until it completes it, and never touches it after the release
// store of its state (ReadCompletion::complete). The queue, `closing_` and the worker wake-ups
// are guarded by `mu_`. Worker threads never throw: failures become the op's error.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "core/error.hpp"
#include "experts/expert_reader.hpp"

namespace moeflux {

namespace {

class PreadReader final : public ExpertReader {
 public:
  PreadReader(LayerFiles files, size_t threads) : files_(std::move(files)) {
    if (threads == 0) fail("the threads I/O backend needs at least 1 thread");
    record_bytes_ = files_.record_bytes();
    description_ = "threads x" + std::to_string(threads) + ", " +
                   (files_.mode() == IoMode::Direct ? "O_DIRECT" : "page cache");
    workers_.reserve(threads);
    try {
      for (size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { worker(); });
    } catch (...) {
      shut_down();
      throw;
    }
  }

  ~PreadReader() override { shut_down(); }

  void submit(std::span<ReadOp* const> ops) override {
    if (ops.empty()) return;
    for (ReadOp* op : ops) {
      files_.check(*op);
      op->error.clear();
      op->state.store(ReadOp::Pending, std::memory_order_relaxed);  // published by mu_ below
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      MF_ASSERT(!closing_);
      queue_.insert(queue_.end(), ops.begin(), ops.end());
    }
    if (ops.size() == 1)
      work_cv_.notify_one();
    else
      work_cv_.notify_all();
  }

  void wait(ReadOp& op) override { completion_.wait(op); }
  const char* describe() const override { return description_.c_str(); }

  ReaderStats stats() const override {
    ReaderStats s;
    s.reads = reads_.load(std::memory_order_relaxed);
    s.bytes = bytes_.load(std::memory_order_relaxed);
    s.busy_seconds = static_cast<double>(busy_ns_.load(std::memory_order_relaxed)) * 1e-9;
    s.verified = verified_.load(std::memory_order_relaxed);
    s.verify_seconds = static_cast<double>(verify_ns_.load(std::memory_order_relaxed)) * 1e-9;
    return s;
  }

 private:
  void worker() {
    for (;;) {
      ReadOp* op;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
        if (queue_.empty()) return;  // closing, nothing left to do
        op = queue_.front();
        queue_.pop_front();
      }
      const auto t0 = std::chrono::steady_clock::now();
      std::string err = read_record(*op);
      const auto t1 = std::chrono::steady_clock::now();
      busy_ns_.fetch_add(static_cast<uint64_t>(
                             std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()),
                         std::memory_order_relaxed);
      if (err.empty() && files_.verifies()) {
        err = files_.verify(*op);
        verify_ns_.fetch_add(
            static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                      std::chrono::steady_clock::now() - t1)
                                      .count()),
            std::memory_order_relaxed);
        verified_.fetch_add(1, std::memory_order_relaxed);
      }
      if (err.empty()) {
        reads_.fetch_add(1, std::memory_order_relaxed);
        bytes_.fetch_add(record_bytes_, std::memory_order_relaxed);
      }
      completion_.complete(*op, std::move(err));
    }
  }

  // Reads the whole record into op.dst. Returns "" on success, else the error message.
  std::string read_record(const ReadOp& op) const {
    const int fd = files_.fd(op.layer);
    const uint64_t base = files_.offset(op.expert);
    const bool direct = files_.mode() == IoMode::Direct;
    size_t done = 0;
    while (done < record_bytes_) {
      // O_DIRECT reads must start 4096-aligned; a short read that ends unaligned hit the end
      // of the file (regular files return short counts only there).
      if (direct && done % kExpertAlignment != 0) return files_.truncated_error(op);
      const ssize_t n =
          ::pread(fd, op.dst + done, record_bytes_ - done, static_cast<off_t>(base + done));
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return files_.errno_error(op, errno);
      }
      if (n == 0) return files_.truncated_error(op);
      done += static_cast<size_t>(n);
    }
    return "";
  }

  // Fails the ops nobody has started, lets the workers finish the reads in progress, joins
  // them. Idempotent.
  void shut_down() {
    std::deque<ReadOp*> cancelled;
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
      cancelled.swap(queue_);
    }
    work_cv_.notify_all();
    for (ReadOp* op : cancelled) completion_.complete(*op, files_.closed_error(*op));
    for (std::thread& t : workers_)
      if (t.joinable()) t.join();
    workers_.clear();
  }

  LayerFiles files_;
  std::string description_;
  ReadCompletion completion_;

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::deque<ReadOp*> queue_;  // submitted, not yet taken by a worker (guarded by mu_)
  bool closing_ = false;       // guarded by mu_
  std::vector<std::thread> workers_;

  std::atomic<uint64_t> reads_{0}, bytes_{0}, busy_ns_{0}, verified_{0}, verify_ns_{0};
};

}  // namespace

std::unique_ptr<ExpertReader> make_pread_reader(LayerFiles files, size_t threads) {
  return std::make_unique<PreadReader>(std::move(files), threads);
}

}  // namespace moeflux
