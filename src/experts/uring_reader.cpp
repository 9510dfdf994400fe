// The IoUring backend of ExpertReader: one ring of `depth` entries; submit() queues ops and
// fills free slots of the ring; a reaper thread waits for completions, resubmits the rest of
// short or retryable reads, refills the ring, checks each finished record against its checksum
// (when the files carry them) and completes the ops.
//
// Ownership and locking:
//  - the submitter owns every ReadOp and its destination; the reader holds a pointer to an op
//    from submit() until ReadCompletion::complete() stores its state (release) and never
//    touches it afterwards;
//  - `mu_` guards the submission side of the ring (SQEs, io_uring_submit), `pending_`, the
//    slots and `in_flight_`; the completion side (CQEs) is touched only by the reaper thread
//    (liburing allows one submitter and one consumer concurrently);
//  - at most `depth_` reads are in the kernel at once (one per slot), so the completion queue
//    (2 * depth entries) cannot overflow, even with the one shutdown NOP;
//  - the kernel writes into op->dst until the read's CQE is reaped; the liburing CQ head load
//    is an acquire, the state store a release, so the waiter sees the data.
// The reaper never throws: failures become the op's error. A failure of the ring itself
// (io_uring_enter refusing a ring that worked) is an internal error and aborts.
#include <liburing.h>

#include <chrono>
#include <climits>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "experts/expert_reader.hpp"

namespace moeflux {

namespace {

constexpr uint64_t kStopTag = ~uint64_t{0};  // user_data of the shutdown NOP
constexpr unsigned kMaxDepth = 32768;        // IORING_MAX_ENTRIES
constexpr size_t kMaxReadBytes = size_t{1} << 30;

[[noreturn]] void ring_broken(const char* what, int err) {
  std::fprintf(stderr, "moeflux: internal error: io_uring %s failed: %s\n", what,
               std::strerror(err));
  std::abort();
}

class UringReader final : public ExpertReader {
 public:
  UringReader(LayerFiles files, unsigned depth) : files_(std::move(files)), depth_(depth) {
    if (depth_ == 0 || depth_ > kMaxDepth)
      fail("io_uring queue depth " + std::to_string(depth_) + " out of range [1, " +
           std::to_string(kMaxDepth) + "]");
    record_bytes_ = files_.record_bytes();
    const int r = io_uring_queue_init(depth_, &ring_, 0);
    if (r < 0)
      fail(std::string("io_uring unavailable (") + std::strerror(-r) +
           "): use --io-backend threads");
    slots_.resize(depth_);
    free_.reserve(depth_);
    for (unsigned i = depth_; i-- > 0;) free_.push_back(i);
    description_ = std::string("io_uring, ") +
                   (files_.mode() == IoMode::Direct ? "O_DIRECT" : "page cache") + ", depth " +
                   std::to_string(depth_);
    try {
      reaper_ = std::thread([this] { reap(); });
    } catch (...) {
      io_uring_queue_exit(&ring_);
      throw;
    }
  }

  ~UringReader() override {
    std::deque<ReadOp*> cancelled;
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
      cancelled.swap(pending_);
      io_uring_sqe* sqe = get_sqe_locked();
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data64(sqe, kStopTag);
      submit_locked();
    }
    for (ReadOp* op : cancelled) completion_.complete(*op, files_.closed_error(*op));
    reaper_.join();  // returns once the NOP and every read in flight have been reaped
    io_uring_queue_exit(&ring_);
  }

  void submit(std::span<ReadOp* const> ops) override {
    if (ops.empty()) return;
    for (ReadOp* op : ops) {
      files_.check(*op);
      op->error.clear();
      op->state.store(ReadOp::Pending, std::memory_order_relaxed);  // published by mu_ below
    }
    std::lock_guard<std::mutex> lock(mu_);
    MF_ASSERT(!closing_);
    pending_.insert(pending_.end(), ops.begin(), ops.end());
    fill_locked();
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
  using Clock = std::chrono::steady_clock;
  struct Slot {
    ReadOp* op = nullptr;
    size_t done = 0;  // bytes of the record already read
    Clock::time_point start;
  };
  struct Finished {
    ReadOp* op;
    std::string error;
  };

  // An SQE; submits what is queued to free ring entries if needed. mu_ held.
  io_uring_sqe* get_sqe_locked() {
    for (;;) {
      if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) return sqe;
      submit_locked();
      std::this_thread::yield();
    }
  }

  // Hands the prepared SQEs to the kernel. mu_ held. -EAGAIN / -EBUSY / -EINTR are transient
  // (kernel memory; the CQ cannot overflow given the depth bound), anything else means the
  // ring is unusable.
  void submit_locked() {
    while (io_uring_sq_ready(&ring_) > 0) {
      const int r = io_uring_submit(&ring_);
      if (r >= 0) continue;
      if (r == -EINTR || r == -EAGAIN || r == -EBUSY) {
        std::this_thread::yield();
        continue;
      }
      ring_broken("submit", -r);
    }
  }

  // Queues the read of the rest of slot `i`'s record. mu_ held.
  void prep_read_locked(unsigned i) {
    Slot& s = slots_[i];
    const ReadOp& op = *s.op;
    const size_t n = std::min(record_bytes_ - s.done, kMaxReadBytes);
    io_uring_sqe* sqe = get_sqe_locked();
    io_uring_prep_read(sqe, files_.fd(op.layer), op.dst + s.done, static_cast<unsigned>(n),
                       files_.offset(op.expert) + s.done);
    io_uring_sqe_set_data64(sqe, i);
    // A buffered read that hits the page cache would otherwise be copied inline by
    // io_uring_submit, in the submitting thread and under mu_: one copy at a time, and submit()
    // would not return at once. IOSQE_ASYNC hands it to the kernel's io-wq workers instead.
    // O_DIRECT reads are asynchronous by themselves.
    if (files_.mode() == IoMode::PageCache) io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
  }

  // Moves pending ops into free slots and submits. mu_ held.
  void fill_locked() {
    while (!pending_.empty() && !free_.empty()) {
      const unsigned i = free_.back();
      free_.pop_back();
      slots_[i] = Slot{pending_.front(), 0, Clock::now()};
      pending_.pop_front();
      ++in_flight_;
      prep_read_locked(i);
    }
    submit_locked();
  }

  // Frees slot i, recording its op's result. mu_ held.
  void finish_locked(unsigned i, std::string error) {
    Slot& s = slots_[i];
    const auto ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - s.start).count();
    busy_ns_.fetch_add(static_cast<uint64_t>(ns), std::memory_order_relaxed);
    if (error.empty()) {
      reads_.fetch_add(1, std::memory_order_relaxed);
      bytes_.fetch_add(record_bytes_, std::memory_order_relaxed);
    }
    finished_.push_back(Finished{s.op, std::move(error)});
    s.op = nullptr;
    free_.push_back(i);
    --in_flight_;
  }

  // One completion. mu_ held.
  void handle_locked(const io_uring_cqe& cqe) {
    const uint64_t tag = io_uring_cqe_get_data64(&cqe);
    if (tag == kStopTag) {
      stop_seen_ = true;
      return;
    }
    MF_ASSERT(tag < slots_.size() && slots_[tag].op != nullptr);
    const unsigned i = static_cast<unsigned>(tag);
    Slot& s = slots_[i];
    const int res = cqe.res;
    if (res == -EAGAIN || res == -EINTR) return prep_read_locked(i);
    if (res < 0) return finish_locked(i, files_.errno_error(*s.op, -res));
    if (res == 0) return finish_locked(i, files_.truncated_error(*s.op));
    s.done += static_cast<size_t>(res);
    if (s.done == record_bytes_) return finish_locked(i, "");
    // Short read: O_DIRECT reads must start 4096-aligned, and a short read that ends unaligned
    // hit the end of the file. Otherwise read the rest.
    if (files_.mode() == IoMode::Direct && s.done % kExpertAlignment != 0)
      return finish_locked(i, files_.truncated_error(*s.op));
    prep_read_locked(i);
  }

  void reap() {
    std::vector<Finished> finished;
    for (;;) {
      io_uring_cqe* cqe = nullptr;
      const int r = io_uring_wait_cqe(&ring_, &cqe);
      if (r == -EINTR || r == -EAGAIN) continue;
      if (r < 0) ring_broken("wait", -r);
      bool stop;
      {
        std::lock_guard<std::mutex> lock(mu_);
        unsigned head, count = 0;
        io_uring_for_each_cqe(&ring_, head, cqe) {
          handle_locked(*cqe);
          ++count;
        }
        io_uring_cq_advance(&ring_, count);
        fill_locked();  // new reads into the freed slots, and the resubmissions
        finished.swap(finished_);
        stop = stop_seen_ && in_flight_ == 0 && pending_.empty();
      }
      // Checked and completed outside the lock: waiters wake without contending for mu_.
      for (Finished& f : finished) {
        if (f.error.empty() && files_.verifies()) {
          const auto t0 = Clock::now();
          f.error = files_.verify(*f.op);
          verify_ns_.fetch_add(
              static_cast<uint64_t>(
                  std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()),
              std::memory_order_relaxed);
          verified_.fetch_add(1, std::memory_order_relaxed);
        }
        completion_.complete(*f.op, std::move(f.error));
      }
      finished.clear();
      if (stop) return;
    }
  }

  LayerFiles files_;
  unsigned depth_;
  std::string description_;
  ReadCompletion completion_;
  io_uring ring_{};

  std::mutex mu_;
  std::deque<ReadOp*> pending_;     // submitted, waiting for a slot (guarded by mu_)
  std::vector<Slot> slots_;         // one per read in the kernel (guarded by mu_)
  std::vector<unsigned> free_;      // free slot indices (guarded by mu_)
  std::vector<Finished> finished_;  // completed this round, not yet published (guarded by mu_)
  unsigned in_flight_ = 0;          // occupied slots (guarded by mu_)
  bool closing_ = false;            // guarded by mu_
  bool stop_seen_ = false;          // the shutdown NOP was reaped (guarded by mu_)
  std::thread reaper_;

  std::atomic<uint64_t> reads_{0}, bytes_{0}, busy_ns_{0}, verified_{0}, verify_ns_{0};
};

}  // namespace

std::unique_ptr<ExpertReader> make_uring_reader(LayerFiles files, unsigned depth) {
  return std::make_unique<UringReader>(std::move(files), depth);
}

}  // namespace moeflux
