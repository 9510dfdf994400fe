#include "core/thread_pool.hpp"

#include <algorithm>

namespace moeflux {

ThreadPool::ThreadPool(size_t n_threads) {
  if (n_threads == 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
  for (size_t i = 0; i + 1 < n_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(size_t index) {
  size_t seen = 0;
  for (;;) {
    std::unique_lock<std::mutex> lock(mu_);
    start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    const auto range = ranges_[index];
    const auto* job = job_;
    lock.unlock();
    if (range.first < range.second) (*job)(range.first, range.second);
    lock.lock();
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn,
                              size_t grain) {
  if (n == 0) return;
  grain = std::max<size_t>(grain, 1);
  const size_t chunks = (n + grain - 1) / grain;
  const size_t parts = std::min(size(), chunks);
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  // Balanced split in units of `grain`.
  std::vector<std::pair<size_t, size_t>> ranges(size(), {0, 0});
  size_t begin = 0;
  for (size_t p = 0; p < parts; ++p) {
    const size_t my_chunks = chunks / parts + (p < chunks % parts ? 1 : 0);
    const size_t end = std::min(n, begin + my_chunks * grain);
    ranges[p] = {begin, end};
    begin = end;
  }
  // Worker i runs ranges[i] for i < workers; the caller runs the last slot.
  std::swap(ranges[parts - 1], ranges[size() - 1]);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ranges_ = ranges;
    job_ = &fn;
    pending_ = workers_.size();
    ++generation_;
  }
  start_cv_.notify_all();
  const auto mine = ranges_.back();
  if (mine.first < mine.second) fn(mine.first, mine.second);
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
}

}  // namespace moeflux
