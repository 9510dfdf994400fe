#include "core/thread_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace moeflux {
namespace {

// Every index in [0, n) is visited exactly once, ranges respect the grain, for spinning and
// sleeping pools of several sizes and many back-to-back calls (the decode pattern).
TEST(ThreadPool, CoversEveryIndexOnce) {
  for (bool spin : {true, false}) {
    for (size_t threads : {1, 2, 3, 8}) {
      ThreadPool pool(threads, spin);
      for (size_t n : {1, 2, 7, 16, 100, 1001}) {
        for (size_t grain : {1, 4, 16}) {
          std::vector<std::atomic<int>> hits(n);
          std::atomic<int> bad_grain{0};
          pool.parallel_for(
              n,
              [&](size_t b, size_t e) {
                if (b % grain != 0 || (e != n && (e - b) % grain != 0)) ++bad_grain;
                for (size_t i = b; i < e; ++i) ++hits[i];
              },
              grain);
          for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "i=" << i;
          EXPECT_EQ(bad_grain.load(), 0);
        }
      }
    }
  }
}

TEST(ThreadPool, ManyShortCallsAndSleepWake) {
  ThreadPool pool(3);
  std::atomic<long> sum{0};
  for (int call = 0; call < 2000; ++call)
    pool.parallel_for(64, [&](size_t b, size_t e) { sum += static_cast<long>(e - b); });
  EXPECT_EQ(sum.load(), 2000L * 64);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // workers fall asleep
  pool.parallel_for(64, [&](size_t b, size_t e) { sum += static_cast<long>(e - b); });
  EXPECT_EQ(sum.load(), 2001L * 64);
}

// Wake-ups (no work) between, before and instead of jobs: every job still covers each index
// exactly once, a pool destroyed right after a wake-up shuts down, and a wake-up after the
// workers fell asleep is answered.
TEST(ThreadPool, WakeUpsBetweenJobs) {
  for (int round = 0; round < 3; ++round) {
    ThreadPool pool(4);
    std::vector<std::atomic<int>> hits(257);
    for (int call = 0; call < 300; ++call) {
      pool.wake();
      if (call % 3 == 0) pool.wake();  // twice: the second does nothing while the first is out
      if (call % 100 == 99) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      pool.parallel_for(hits.size(), [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) ++hits[i];
      });
    }
    for (const auto& h : hits) ASSERT_EQ(h.load(), 300);
    if (round == 1) pool.wake();  // destroyed with a wake-up in flight
  }
  ThreadPool inline_only(1);
  inline_only.wake();  // no workers: nothing to do
  int n = 0;
  inline_only.parallel_for(10, [&](size_t b, size_t e) { n += static_cast<int>(e - b); });
  EXPECT_EQ(n, 10);
}

TEST(ThreadPool, SmallLoopsRunInline) {
  ThreadPool pool(4);
  const auto caller = std::this_thread::get_id();
  bool inline_run = false;
  pool.parallel_for(
      8, [&](size_t, size_t) { inline_run = std::this_thread::get_id() == caller; }, 16);
  EXPECT_TRUE(inline_run);
}

}  // namespace
}  // namespace moeflux
