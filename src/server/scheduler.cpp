#include "server/scheduler.hpp"

#include <algorithm>
#include <cmath>
#include <optional>

#include "core/error.hpp"
#include "core/finite.hpp"
#include "runtime/stop_strings.hpp"
#include "server/api_error.hpp"

namespace moeflux::server {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

size_t common_prefix(const std::vector<int>& a, const std::vector<int>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

}  // namespace

// A running job's decoding state.
struct Decode {
  Decode(std::shared_ptr<Job> j, const Tokenizer& tok)
      : job(std::move(j)),
        sampler(job->params.sampling),
        detok(tok),
        stops(job->params.stop),
        inside_think(job->params.starts_in_reasoning) {}
  std::shared_ptr<Job> job;
  Sampler sampler;
  StreamingDetokenizer detok;
  StopStringFilter stops;
  bool inside_think;
  int think_tokens = 0;
  int generated = 0;
  JobResult result;
  Clock::time_point started;
  std::vector<float> masked;  // ignore_eos: the logits with the end tokens removed
};

struct Scheduler::Slot {
  std::unique_ptr<Session> session;
  std::optional<Decode> d;
  uint64_t last_used = 0;
};

Scheduler::Scheduler(Engine& engine, const Tokenizer& tok, const SchedulerOptions& opts)
    : engine_(engine), tok_(tok), opts_(opts) {
  if (opts_.parallel < 1) fail("--parallel must be at least 1");
  if (size_t(opts_.parallel) > engine.max_rows())
    fail("--parallel " + std::to_string(opts_.parallel) + " exceeds the " +
         std::to_string(engine.max_rows()) + " rows of a forward pass (--prefill-chunk)");
  for (int i = 0; i < opts_.parallel; ++i) {
    auto s = std::make_unique<Slot>();
    s->session = std::make_unique<Session>(engine_, opts_.context);
    s->session->set_checkpoint_budget(opts_.checkpoint_bytes);
    slots_.push_back(std::move(s));
  }
  context_ = slots_[0]->session->context();
  stats_.slots = slots_.size();
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  shutdown();
}

void Scheduler::submit(std::shared_ptr<Job> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) throw ApiError(503, "the server is shutting down", "", "server_error");
    // Waiting means beyond the free slots: a request a free slot will take at once is not.
    if (queue_.size() >= opts_.queue_limit + (slots_.size() - stats_.active)) {
      ++stats_.rejected;
      throw ApiError(
          429,
          "too many requests waiting (" + std::to_string(opts_.queue_limit) + "); try again later",
          "", "rate_limit_error", "queue_full");
    }
    queue_.push_back(std::move(job));
    ++stats_.submitted;
    stats_.queued = queue_.size();
  }
  cv_.notify_all();
}

void Scheduler::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stopping_ || stats_.active > 0 || (!queue_.empty() && stats_.active < slots_.size());
      });
      if (stopping_) {
        for (auto& j : queue_) j->failed(503, "the server is shutting down");
        queue_.clear();
        stats_.queued = 0;
        if (stats_.active == 0) return;
      }
    }
    admit_one();
    step();
  }
}

bool Scheduler::admit_one() {
  std::shared_ptr<Job> job;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || queue_.empty() || stats_.active >= slots_.size()) return false;
    job = std::move(queue_.front());
    queue_.pop_front();
    stats_.queued = queue_.size();
    if (job->cancelled()) {
      ++stats_.cancelled;
      return true;
    }
    ++stats_.active;
  }
  // The free slot sharing the longest prefix with the prompt; ties: least recently used.
  Slot* best = nullptr;
  size_t best_len = 0;
  for (auto& s : slots_) {
    if (s->d) continue;
    const size_t n = common_prefix(s->session->tokens(), job->params.prompt);
    if (!best || n > best_len || (n == best_len && s->last_used < best->last_used)) {
      best = s.get();
      best_len = n;
    }
  }
  MF_ASSERT(best != nullptr);
  admit(*best, std::move(job));
  return true;
}

void Scheduler::admit(Slot& slot, std::shared_ptr<Job> job) {
  slot.last_used = ++clock_;
  slot.d.emplace(job, tok_);
  Decode& d = *slot.d;
  Session& s = *slot.session;
  const std::vector<int>& prompt = job->params.prompt;
  d.result.queue_seconds = seconds_since(job->submitted);
  d.result.prompt_tokens = int(prompt.size());
  const auto t0 = Clock::now();
  try {
    const size_t reuse = common_prefix(s.tokens(), prompt);
    if (reuse < size_t(s.position())) s.memory_seq_rm(int(reuse));
    if (reuse < prompt.size()) {
      const std::span<const int> rest(prompt.data() + reuse, prompt.size() - reuse);
      s.eval_prompt(rest);
      if (rest.size() == 1) s.checkpoint();  // where the next turn resumes
    }
    require_finite_logits(s.logits(), s.logits().size(), size_t(s.position()) - 1,
                          s.model().package().dir());
    d.result.cached_tokens = int(reuse);
  } catch (const Error& e) {
    fail_job(slot, 500, std::string("evaluating the prompt failed: ") + e.what());
    return;
  }
  d.result.prompt_seconds = seconds_since(t0);
  d.started = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.prompt_tokens += prompt.size();
  stats_.cached_prompt_tokens += d.result.cached_tokens;
}

void Scheduler::release(Slot& slot) {
  slot.d.reset();
  std::lock_guard<std::mutex> lock(mu_);
  --stats_.active;
}

void Scheduler::finish(Slot& slot, const char* reason, bool flush) {
  Decode& d = *slot.d;
  if (flush) {
    std::string out;
    d.stops.push(d.detok.flush(), true, out);
    if (!out.empty()) d.job->text(std::move(out));
  }
  d.result.finish_reason = reason;
  d.result.completion_tokens = d.generated;
  d.result.decode_seconds = seconds_since(d.started);
  const std::shared_ptr<Job> job = d.job;
  const JobResult result = d.result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.completed;
    stats_.generated_tokens += d.generated;
  }
  release(slot);
  job->done(result);  // last: a client that sees its reply also sees the slot free
}

void Scheduler::fail_job(Slot& slot, int status, const std::string& message) {
  const std::shared_ptr<Job> job = slot.d->job;
  slot.session->clear();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.failed;
  }
  release(slot);
  job->failed(status, message);
}

void Scheduler::step() {
  std::vector<Session*> sessions;
  std::vector<int> tokens;
  std::vector<Slot*> batch;
  bool stopping;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping = stopping_;
  }
  for (auto& sp : slots_) {
    Slot& slot = *sp;
    if (!slot.d) continue;
    Decode& d = *slot.d;
    const JobParams& p = d.job->params;
    if (d.job->cancelled()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++stats_.cancelled;
      }
      release(slot);
      continue;
    }
    if (stopping) {
      finish(slot, "stop", true);
      continue;
    }
    Session& s = *slot.session;
    int t;
    if (d.inside_think && p.think_close_id && p.think_budget >= 0 &&
        d.think_tokens >= p.think_budget) {
      t = *p.think_close_id;  // the thinking budget is spent
    } else if (p.ignore_eos) {
      d.masked.assign(s.logits().begin(), s.logits().end());
      for (int e : p.end_tokens) d.masked[size_t(e)] = -INFINITY;
      t = d.sampler.sample(d.masked, s.tokens());
    } else {
      t = d.sampler.sample(s.logits(), s.tokens());
    }
    if (!p.ignore_eos &&
        std::find(p.end_tokens.begin(), p.end_tokens.end(), t) != p.end_tokens.end()) {
      finish(slot, "stop", true);
      continue;
    }
    ++d.generated;
    if (p.think_open_id && t == *p.think_open_id) {
      d.inside_think = true;
      d.think_tokens = 0;
    } else if (p.think_close_id && t == *p.think_close_id) {
      d.inside_think = false;
    } else if (d.inside_think) {
      ++d.think_tokens;
    }
    std::string out;
    const bool stopped = d.stops.push(d.detok.push(t), false, out);
    if (!out.empty()) d.job->text(std::move(out));
    if (stopped) {
      finish(slot, "stop", false);
      continue;
    }
    if (d.generated >= p.max_tokens || size_t(s.position()) >= s.context()) {
      finish(slot, "length", true);
      continue;
    }
    sessions.push_back(&s);
    tokens.push_back(t);
    batch.push_back(&slot);
  }
  if (sessions.empty()) return;

  const ExpertStreamer& st = engine_.streamer();
  const uint64_t req0 = st.stats().total().requests, reads0 = st.stats().storage_reads;
  const auto t0 = Clock::now();
  try {
    eval_batch(sessions, tokens);
  } catch (const Error& e) {
    for (Slot* slot : batch) fail_job(*slot, 500, std::string("decoding failed: ") + e.what());
    return;
  }
  const double dt = seconds_since(t0);
  const uint64_t rb = st.record_bytes();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.decode_steps;
    stats_.decode_rows += sessions.size();
    stats_.decode_seconds += dt;
    stats_.decode_expert_bytes += (st.stats().total().requests - req0) * rb;
    stats_.decode_storage_bytes += (st.stats().storage_reads - reads0) * rb;
  }
  for (Slot* slot : batch) {
    Session& s = *slot->session;
    try {
      require_finite_logits(s.logits(), s.logits().size(), size_t(s.position()) - 1,
                            s.model().package().dir());
    } catch (const Error& e) {
      fail_job(*slot, 500, e.what());
    }
  }
}

}  // namespace moeflux::server
