#include "experts/fault_injecting_reader.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"

namespace moeflux {

FaultInjectingReader::FaultInjectingReader(std::unique_ptr<ExpertReader> inner)
    : inner_(std::move(inner)) {
  MF_ASSERT(inner_ != nullptr);
  record_bytes_ = inner_->record_bytes();
  description_ = std::string("fault injection over ") + inner_->describe();
  finisher_ = std::thread([this] { finisher(); });
}

FaultInjectingReader::~FaultInjectingReader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  work_cv_.notify_all();
  finisher_.join();  // drains queue_: every faulted op is completed
  inner_.reset();
}

void FaultInjectingReader::fail_nth(uint64_t n, InjectedFault fault) {
  std::lock_guard<std::mutex> lock(mu_);
  nth_.push_back(NthFault{submitted_ + n, std::move(fault)});
}

void FaultInjectingReader::fail_record(int layer, int expert, InjectedFault fault) {
  std::lock_guard<std::mutex> lock(mu_);
  records_.push_back(RecordFault{layer, expert, std::move(fault)});
}

void FaultInjectingReader::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  nth_.clear();
  records_.clear();
}

uint64_t FaultInjectingReader::injected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return injected_;
}

void FaultInjectingReader::submit(std::span<ReadOp* const> ops) {
  std::vector<ReadOp*> plain;    // forwarded untouched
  std::vector<ReadOp*> shadows;  // read on behalf of faulted ops
  plain.reserve(ops.size());
  {
    std::lock_guard<std::mutex> lock(mu_);
    MF_ASSERT(!closing_);
    for (ReadOp* op : ops) {
      const uint64_t index = submitted_++;
      const InjectedFault* fault = nullptr;
      auto nth = std::find_if(nth_.begin(), nth_.end(),
                              [&](const NthFault& f) { return f.index == index; });
      InjectedFault nth_fault;
      if (nth != nth_.end()) {
        nth_fault = std::move(nth->fault);
        nth_.erase(nth);
        fault = &nth_fault;
      } else {
        for (const RecordFault& r : records_)
          if (r.layer == op->layer && (r.expert < 0 || r.expert == op->expert)) {
            fault = &r.fault;
            break;
          }
      }
      if (!fault) {
        plain.push_back(op);
        continue;
      }
      op->error.clear();
      op->state.store(ReadOp::Pending, std::memory_order_relaxed);  // published by mu_
      auto shadow = std::make_unique<ReadOp>();
      shadow->layer = op->layer;
      shadow->expert = op->expert;
      shadow->dst = op->dst;
      shadows.push_back(shadow.get());
      own_.insert(op);
      queue_.push_back(Faulted{op, std::move(shadow), *fault});
    }
    // Submitted under mu_ so the finisher (which waits on shadows in queue order) never waits
    // on a shadow not yet given to the inner reader.
    if (!shadows.empty()) inner_->submit(shadows);
  }
  if (!shadows.empty()) work_cv_.notify_one();
  if (!plain.empty()) inner_->submit(plain);
}

void FaultInjectingReader::wait(ReadOp& op) {
  bool own;
  {
    std::lock_guard<std::mutex> lock(mu_);
    own = own_.count(&op) != 0;
  }
  // A faulted op leaves own_ in the same critical section that stores its state, so an op not
  // found here is either the inner reader's or already complete (inner_->wait returns at once).
  if (own)
    completion_.wait(op);
  else
    inner_->wait(op);
}

void FaultInjectingReader::finisher() {
  for (;;) {
    Faulted f;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
      if (queue_.empty()) return;
      f = std::move(queue_.front());
      queue_.pop_front();
    }
    apply(f);
  }
}

void FaultInjectingReader::apply(Faulted& f) {
  std::string inner_error;
  try {
    inner_->wait(*f.shadow);
  } catch (const Error& e) {
    inner_error = e.what();
  }
  ReadOp& op = *f.user;
  std::string error;
  const std::string where =
      "expert " + std::to_string(op.expert) + " of layer " + std::to_string(op.layer);
  if (f.fault.kind == InjectedFault::Fail) {
    std::memset(op.dst, kPoison, record_bytes_);
    error = f.fault.message + " (injected fault: " + where + ")";
  } else {
    const size_t keep = std::min(f.fault.keep_bytes, record_bytes_);
    std::memset(op.dst + keep, kPoison, record_bytes_ - keep);
    // The inner error names the file where the real read failed too; otherwise the file is
    // not known here, so the message names the record.
    error = (inner_error.empty() ? std::string("") : inner_error + "; ") + "truncated: " + where +
            " ends past the end of the file (injected short read: " + std::to_string(keep) +
            " of " + std::to_string(record_bytes_) + " bytes)";
  }
  // Leaving own_ and storing the state happen together under mu_ (lock order: mu_, then the
  // completion's mutex), so wait() either finds the op in own_ or finds it complete.
  std::lock_guard<std::mutex> lock(mu_);
  ++injected_;
  own_.erase(&op);
  completion_.complete(op, std::move(error));
}

}  // namespace moeflux
