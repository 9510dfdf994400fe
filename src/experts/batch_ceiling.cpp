// The expert-batch ceiling (ceilings.hpp): what storage gives decode's access pattern through
// our own reader when nothing else runs. Decode that waits on reads at this rate loses nothing
// to the engine; the gap between this and the sequential ceiling is the storage's penalty for
// K scattered records at a time.
#include <algorithm>
#include <chrono>
#include <memory>
#include <numeric>
#include <random>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "experts/ceilings.hpp"

namespace moeflux {

Ceiling measure_expert_batches(const Package& pkg, const ReaderOptions& io, int k,
                               const CeilingOptions& opts) {
  const ModelConfig& c = pkg.config();
  Ceiling result;
  result.threads = io.backend == IoBackend::Threads ? static_cast<int>(io.threads) : 1;
  std::vector<int> layers;
  for (int l = 0; l < c.num_layers; ++l)
    if (c.layer_is_moe[l]) layers.push_back(l);
  if (layers.empty() || k <= 0) {
    result.note = "no MoE layers";
    return result;
  }
  k = std::min(k, c.num_experts);
  std::unique_ptr<ExpertReader> reader;
  try {
    reader = make_expert_reader(pkg, io);
  } catch (const Error& e) {
    result.note = e.what();
    return result;
  }
  const size_t record = reader->record_bytes();
  AlignedBuffer buffer(record * static_cast<size_t>(k), kExpertAlignment);
  std::vector<std::unique_ptr<ReadOp>> ops;
  std::vector<ReadOp*> batch;
  for (int i = 0; i < k; ++i) {
    ops.push_back(std::make_unique<ReadOp>());
    ops.back()->dst = buffer.data() + record * static_cast<size_t>(i);
    batch.push_back(ops.back().get());
  }
  std::mt19937_64 rng(0x6d6f65666c7578);
  std::vector<int> experts(c.num_experts);
  uint64_t bytes = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double seconds = 0;
  for (size_t b = 0; seconds < opts.max_seconds && bytes < opts.max_bytes; ++b) {
    std::iota(experts.begin(), experts.end(), 0);
    for (int i = 0; i < k; ++i)  // partial Fisher-Yates: k distinct experts
      std::swap(experts[i],
                experts[i + std::uniform_int_distribution<int>(0, c.num_experts - 1 - i)(rng)]);
    for (int i = 0; i < k; ++i) {
      batch[i]->layer = layers[b % layers.size()];
      batch[i]->expert = experts[i];
    }
    reader->submit(batch);
    try {
      for (ReadOp* op : batch) reader->wait(*op);
    } catch (const Error&) {
      for (ReadOp* op : batch) {  // let the rest land before the buffers go
        try {
          reader->wait(*op);
        } catch (const Error&) {
        }
      }
      throw;
    }
    bytes += record * static_cast<uint64_t>(k);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  result.measured = true;
  result.bytes = bytes;
  result.seconds = seconds;
  result.gb_per_s = bytes / seconds / 1e9;
  result.note = std::string(io_mode_name(io.mode)) + ", " + reader->describe() + ", batches of " +
                std::to_string(k) + " random records";
  return result;
}

}  // namespace moeflux
