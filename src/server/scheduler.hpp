// The scheduler: one thread that owns the engine's forward passes for the server.
//
// It holds `parallel` slots, each a Session on the shared Engine. A submitted job waits in a
// bounded queue until a slot is free; the slot chosen is the free one whose evaluated ids share
// the longest prefix with the job's prompt (prefix reuse: the session is cut back to that prefix,
// losslessly through its checkpoints, and only the rest of the prompt is evaluated), ties going
// to the least recently used. Between decode steps at most one job is admitted (its prompt
// evaluated), so running replies keep streaming while new ones start.
//
// Decode: every slot with a running job samples its next token, and the tokens of all of them
// are evaluated in one forward pass (eval_batch): each MoE layer fetches the union of their
// experts once. A job ends at an end token (unless ignore_eos), a stop string, max_tokens, a full
// context, cancellation (the client went away: its slot is freed at the next step) or shutdown
// (finish_reason "stop", so streams end cleanly). A sampled token that ends the job is not
// evaluated; the session keeps the ids it did evaluate, for the next request to reuse.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/session.hpp"
#include "server/job.hpp"
#include "text/tokenizer.hpp"

namespace moeflux::server {

struct SchedulerOptions {
  int parallel = 4;         // slots: sessions decoding together
  size_t queue_limit = 64;  // jobs waiting for a slot at most (more: 429)
  size_t context = 0;       // positions per slot (0: the engine's)
  size_t checkpoint_bytes = Session::kDefaultCheckpointBudget;  // per slot
};

struct SchedulerStats {
  uint64_t submitted = 0, completed = 0, cancelled = 0, failed = 0, rejected = 0;
  uint64_t prompt_tokens = 0, cached_prompt_tokens = 0, generated_tokens = 0;
  uint64_t decode_steps = 0, decode_rows = 0;  // forward passes of batched decode, their rows
  double decode_seconds = 0;
  uint64_t decode_expert_bytes = 0;   // expert records compute used in decode x record bytes
  uint64_t decode_storage_bytes = 0;  // of those, read from storage
  size_t queued = 0, active = 0, slots = 0;
};

class Scheduler {
 public:
  Scheduler(Engine& engine, const Tokenizer& tok, const SchedulerOptions& opts);
  ~Scheduler();  // shutdown()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a job. Throws ApiError 429 when the queue is full, 503 after shutdown().
  void submit(std::shared_ptr<Job> job);
  // Ends every job (queued: failed with 503; running: finished as "stop"), then stops the
  // thread. Idempotent.
  void shutdown();
  SchedulerStats stats() const;
  size_t context() const { return context_; }

 private:
  struct Slot;
  void loop();
  bool admit_one();
  void admit(Slot& slot, std::shared_ptr<Job> job);
  void step();
  // End a running job: counters and the slot first, then the job's last event.
  void finish(Slot& slot, const char* reason, bool flush);
  void fail_job(Slot& slot, int status, const std::string& message);  // the session is cleared
  void release(Slot& slot);

  Engine& engine_;
  const Tokenizer& tok_;
  SchedulerOptions opts_;
  size_t context_ = 0;
  std::vector<std::unique_ptr<Slot>> slots_;
  uint64_t clock_ = 0;  // LRU of slots

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  SchedulerStats stats_;
  std::thread thread_;
};

}  // namespace moeflux::server
