// A fixed pool of worker threads running data-parallel loops.
//
// parallel_for(n, fn) calls fn(begin, end) on disjoint ranges covering [0, n) and returns when
// all have finished. The calling thread takes part. Calls must not nest (a fn must not call
// parallel_for on the same pool); the pool is driven by one thread at a time.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moeflux {

class ThreadPool {
 public:
  // n_threads counts the caller: 1 means no workers (everything runs inline). 0 = hardware.
  explicit ThreadPool(size_t n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const { return workers_.size() + 1; }

  // Splits [0, n) into at most size() ranges, each a multiple of `grain` long (but the last).
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn, size_t grain = 1);

 private:
  void worker_loop(size_t index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(size_t, size_t)>* job_ = nullptr;
  std::vector<std::pair<size_t, size_t>> ranges_;  // ranges_[i] for worker i; last is the caller's
  size_t generation_ = 0;
  size_t pending_ = 0;
  bool stop_ = false;
};

}  // namespace moeflux
