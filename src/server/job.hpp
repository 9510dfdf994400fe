// One generation request in flight, shared by the HTTP handler that waits for its output and the
// scheduler that runs it. The scheduler pushes events (text pieces, then exactly one Done or
// Failed); the handler takes them in order. Either side may end it early: the handler cancels
// (the client went away), the scheduler fails it (an error, or the server shutting down).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "sample/sampler.hpp"

namespace moeflux::server {

struct JobParams {
  std::vector<int> prompt;
  SamplerOptions sampling;
  int max_tokens = 256;
  std::vector<std::string> stop;
  std::vector<int> end_tokens;
  bool ignore_eos = false;
  int think_budget = -1;  // < 0: off
  std::optional<int> think_open_id, think_close_id;
  bool starts_in_reasoning = false;  // the prompt left a <think> block open
};

struct JobResult {
  std::string finish_reason;  // "stop" | "length"
  int prompt_tokens = 0;
  int cached_tokens = 0;  // of prompt_tokens, resumed from a cached session state
  int completion_tokens = 0;
  double queue_seconds = 0;   // submitted -> started
  double prompt_seconds = 0;  // prompt evaluation (the uncached part)
  double decode_seconds = 0;  // first sampled token -> the end
};

struct JobEvent {
  enum Kind { Text, Done, Failed } kind = Text;
  std::string text;  // Text: a piece of the reply; Failed: the message
  int status = 500;  // Failed: the HTTP status
  JobResult result;  // Done
};

class Job {
 public:
  explicit Job(JobParams p) : params(std::move(p)), submitted(std::chrono::steady_clock::now()) {}

  const JobParams params;
  const std::chrono::steady_clock::time_point submitted;

  // --- the waiting side -----------------------------------------------------------------------
  // The next event, or nullopt after `timeout` without one.
  std::optional<JobEvent> next(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return std::nullopt;
    JobEvent e = std::move(events_.front());
    events_.pop_front();
    return e;
  }
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  // --- the scheduler side ---------------------------------------------------------------------
  void text(std::string s) { push({JobEvent::Text, std::move(s), 0, {}}); }
  void done(const JobResult& r) { push({JobEvent::Done, "", 0, r}); }
  void failed(int status, std::string message) {
    push({JobEvent::Failed, std::move(message), status, {}});
  }

 private:
  void push(JobEvent e) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(std::move(e));
    }
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<JobEvent> events_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace moeflux::server
