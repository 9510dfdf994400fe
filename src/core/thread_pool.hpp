// A fixed pool of worker threads running data-parallel loops.
//
// parallel_for(n, fn, grain) calls fn(begin, end) on disjoint ranges covering [0, n) and returns
// when all have finished. The calling thread takes part. Calls must not nest (a fn must not call
// parallel_for on the same pool), the pool is driven by one thread at a time, and fn must not
// throw (collect errors and report them after the call). It never allocates.
//
// Decode issues hundreds of short loops per token, so hand-off latency matters more than idle
// CPU: workers spin on an atomic generation counter for a while (~30 µs) before sleeping on a
// condition variable, and the caller spins for completion before sleeping.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

#include "core/function_ref.hpp"

namespace moeflux {

class ThreadPool {
 public:
  // n_threads counts the caller: 1 means no workers (everything runs inline). 0 = hardware.
  // `spin`: hand-offs spin before sleeping (compute pools). It is turned off when the pool has
  // more threads than the machine has hardware threads, and should be off for pools whose jobs
  // block (I/O).
  explicit ThreadPool(size_t n_threads = 0, bool spin = true);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const { return workers_.size() + 1; }

  // Splits [0, n) into at most size() ranges, each a multiple of `grain` long (but the last).
  // A loop of at most `grain` items runs inline on the caller.
  void parallel_for(size_t n, FunctionRef<void(size_t, size_t)> fn, size_t grain = 1);

  // The same with dynamic scheduling: participants take chunks of `chunk` items from a shared
  // counter until none are left (for items of uneven cost). A loop of at most `chunk` items
  // runs inline.
  void parallel_for_dynamic(size_t n, FunctionRef<void(size_t, size_t)> fn, size_t chunk = 1);

  // Wakes the workers without giving them work and returns at once (nothing happens while they
  // are still busy with the last hand-off): they spin afresh, so that a parallel_for issued
  // soon after (within the spin time) starts without their futex wake-ups, which a worker asleep
  // for a while takes long to answer (up to milliseconds). For a caller that knows work is
  // coming and is about to wait for something else first.
  void wake();

 private:
  void worker_loop(size_t index);
  // Waits until every worker is done with the last job (or wake-up).
  void wait_idle();

  std::vector<std::thread> workers_;
  std::mutex mu_;                 // guards sleeping; generation_ changes under it too
  std::condition_variable wake_;  // workers sleep here after spinning
  std::condition_variable done_;  // the caller sleeps here after spinning
  bool spin_ = false;
  const FunctionRef<void(size_t, size_t)>* job_ = nullptr;
  std::vector<std::pair<size_t, size_t>> ranges_;  // ranges_[i] for worker i; last is the caller's
  std::atomic<uint64_t> generation_{0};            // bumped (release) to publish a job
  std::atomic<size_t> pending_{0};                 // workers still running the current job
  std::atomic<bool> stop_{false};
};

}  // namespace moeflux
