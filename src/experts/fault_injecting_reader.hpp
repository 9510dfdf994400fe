// An ExpertReader decorator for tests: forwards reads to another reader and makes chosen ones
// fail, to exercise the error paths of whoever consumes expert reads (engine, cache, prefetch).
//
// A faulted read is still performed by the inner reader (so it costs what a real one costs and
// fails late, the way a device error does); when it has finished, the fault is applied:
//  - Fail:     the op becomes Failed with "<message> (injected fault: expert E of layer L)";
//              its destination is overwritten with kPoison;
//  - Truncate: a simulated short read: the first keep_bytes of the record are the real data,
//              the rest is kPoison, and the op becomes Failed with the message a truncated
//              file gives ("...: truncated: expert E of layer L ends past the end of the file
//              (injected short read: K of N bytes)").
// Unfaulted ops are handed to the inner reader untouched.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "experts/expert_reader.hpp"

namespace moeflux {

struct InjectedFault {
  enum Kind { Fail, Truncate };
  Kind kind = Fail;
  std::string message = "injected I/O error";  // Fail: the error text
  size_t keep_bytes = 0;                       // Truncate: bytes of the record delivered
};

class FaultInjectingReader final : public ExpertReader {
 public:
  static constexpr uint8_t kPoison = 0xDB;

  explicit FaultInjectingReader(std::unique_ptr<ExpertReader> inner);
  // Waits for every faulted op to be finished, then destroys the inner reader (which completes
  // the ops it holds).
  ~FaultInjectingReader() override;

  // The n-th op submitted from now on (n = 0: the next one) gets `fault`. Several may be armed.
  void fail_nth(uint64_t n, InjectedFault fault);
  // Every op reading (layer, expert) gets `fault` until clear(); expert -1: any expert of the
  // layer.
  void fail_record(int layer, int expert, InjectedFault fault);
  // Disarms every fault.
  void clear();
  // Faults applied so far.
  uint64_t injected() const;

  void submit(std::span<ReadOp* const> ops) override;
  void wait(ReadOp& op) override;
  const char* describe() const override { return description_.c_str(); }
  ReaderStats stats() const override { return inner_->stats(); }

 private:
  // A faulted op: the inner reader reads into the user's destination through `shadow`; the
  // finisher thread waits for it and then completes `user` with the fault applied.
  struct Faulted {
    ReadOp* user;
    std::unique_ptr<ReadOp> shadow;
    InjectedFault fault;
  };
  struct NthFault {
    uint64_t index;  // in submission order (counted by `submitted_`)
    InjectedFault fault;
  };
  struct RecordFault {
    int layer, expert;
    InjectedFault fault;
  };

  void finisher();
  void apply(Faulted& f);

  std::unique_ptr<ExpertReader> inner_;
  std::string description_;
  ReadCompletion completion_;  // completes the faulted user ops

  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  uint64_t submitted_ = 0;                 // ops submitted so far (guarded by mu_)
  uint64_t injected_ = 0;                  // guarded by mu_
  std::vector<NthFault> nth_;              // guarded by mu_
  std::vector<RecordFault> records_;       // guarded by mu_
  std::deque<Faulted> queue_;              // faulted ops to finish, FIFO (guarded by mu_)
  std::unordered_set<const ReadOp*> own_;  // faulted user ops not yet completed (guarded by mu_)
  bool closing_ = false;                   // guarded by mu_
  std::thread finisher_;
};

}  // namespace moeflux
