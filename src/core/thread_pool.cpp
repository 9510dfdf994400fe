#include "core/thread_pool.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace moeflux {

namespace {

// Spin for at most this long before sleeping. Measured in time, not iterations: one pause
// instruction costs from ~10 to ~140 cycles depending on the CPU generation. A decode step
// hands work to the pool ~50 times per token with short serial gaps between (norms, routing,
// expert bookkeeping); a worker that fell asleep in a gap costs a futex wake-up (tens of
// microseconds in a VM), so workers keep spinning across such gaps. MOEFLUX_SPIN_US overrides
// (for measurements).
std::chrono::microseconds spin_time() {
  static const std::chrono::microseconds t = [] {
    const char* env = std::getenv("MOEFLUX_SPIN_US");
    const long us = env ? std::strtol(env, nullptr, 10) : 0;
    return std::chrono::microseconds(us > 0 ? us : 200);
  }();
  return t;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// True while less than spin_time() has passed since construction (the clock is read every 64
// iterations).
class SpinClock {
 public:
  SpinClock() : start_(std::chrono::steady_clock::now()) {}
  bool spinning(int iteration) {
    if (iteration % 64 == 0) done_ = std::chrono::steady_clock::now() - start_ > spin_time();
    return !done_;
  }

 private:
  std::chrono::steady_clock::time_point start_;
  bool done_ = false;
};

// MOEFLUX_POOL_WAKE=0 turns wake() into a no-op (for measurements).
bool wake_enabled() {
  static const bool on = [] {
    const char* env = std::getenv("MOEFLUX_POOL_WAKE");
    return !(env && std::string(env) == "0");
  }();
  return on;
}

}  // namespace

ThreadPool::ThreadPool(size_t n_threads, bool spin) {
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  if (n_threads == 0) n_threads = hw;
  spin_ = spin && n_threads <= hw;
  ranges_.assign(n_threads, {0, 0});
  for (size_t i = 0; i + 1 < n_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(size_t index) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g = generation_.load(std::memory_order_acquire);
    SpinClock clock;
    for (int spin = 0; g == seen && !stop_.load(std::memory_order_acquire); ++spin) {
      if (spin_ && clock.spinning(spin)) {
        cpu_relax();
      } else {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] {
          return generation_.load(std::memory_order_acquire) != seen ||
                 stop_.load(std::memory_order_acquire);
        });
      }
      g = generation_.load(std::memory_order_acquire);
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = g;
    const auto range = ranges_[index];
    if (range.first < range.second) (*job_)(range.first, range.second);  // (none: a wake-up)
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);  // pairs with the caller's predicate check
      done_.notify_one();
    }
  }
}

void ThreadPool::wake() {
  // Never waits: workers still busy with (or waking up to) the last hand-off are awake enough.
  if (workers_.empty() || !wake_enabled() || pending_.load(std::memory_order_acquire) != 0) return;
  std::fill(ranges_.begin(), ranges_.end(), std::pair<size_t, size_t>{0, 0});
  pending_.store(workers_.size(), std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  wake_.notify_all();
}

void ThreadPool::wait_idle() {
  SpinClock clock;
  for (int spin = 0; spin_ && pending_.load(std::memory_order_acquire) != 0 && clock.spinning(spin);
       ++spin)
    cpu_relax();
  if (pending_.load(std::memory_order_acquire) != 0) {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
  }
}

void ThreadPool::parallel_for(size_t n, FunctionRef<void(size_t, size_t)> fn, size_t grain) {
  if (n == 0) return;
  grain = std::max<size_t>(grain, 1);
  const size_t chunks = (n + grain - 1) / grain;
  const size_t parts = std::min(size(), chunks);
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  wait_idle();  // a wake-up not yet answered by every worker
  // Balanced split in units of `grain`; workers 0..parts-2 and the caller (last slot) run one
  // range each, the other workers get empty ranges.
  std::fill(ranges_.begin(), ranges_.end(), std::pair<size_t, size_t>{0, 0});
  size_t begin = 0;
  for (size_t p = 0; p < parts; ++p) {
    const size_t my_chunks = chunks / parts + (p < chunks % parts ? 1 : 0);
    const size_t end = std::min(n, begin + my_chunks * grain);
    ranges_[p + 1 == parts ? size() - 1 : p] = {begin, end};
    begin = end;
  }
  job_ = &fn;
  pending_.store(workers_.size(), std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  wake_.notify_all();
  const auto mine = ranges_.back();
  if (mine.first < mine.second) fn(mine.first, mine.second);
  wait_idle();
}

void ThreadPool::parallel_for_dynamic(size_t n, FunctionRef<void(size_t, size_t)> fn,
                                      size_t chunk) {
  chunk = std::max<size_t>(chunk, 1);
  const size_t chunks = (n + chunk - 1) / chunk;
  if (chunks <= 1) {
    if (n > 0) fn(0, n);
    return;
  }
  std::atomic<size_t> next{0};
  auto take = [&](size_t, size_t) {
    for (;;) {
      const size_t b = next.fetch_add(chunk, std::memory_order_relaxed);
      if (b >= n) return;
      fn(b, std::min(n, b + chunk));
    }
  };
  parallel_for(std::min(size(), chunks), take, 1);
}

}  // namespace moeflux
