// The options every evaluating command shares (logits, run, chat, perplexity, bench):
// --backend --gpu --gpu-mem --threads --k --ram-cache --cache-policy --hot --io --io-backend
// --io-threads --no-verify
// --prefetch --prefetch-copies --prefill-chunk --ctx --timing.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "runtime/session.hpp"

namespace moeflux::tool {

struct EngineArgs {
  std::string backend;  // "" = $MOEFLUX_BACKEND, else auto
  int gpu = 0;
  std::string gpu_mem = "0";
  std::string cpu_experts = "off";
  std::string gpu_reads = "auto";
  size_t threads = 0;
  int k = 0;
  std::string ram_cache = "0";
  std::string cache_policy = "lfu";  // chosen on the bundled model's routing (docs/PERF.md)
  size_t hot = 0;
  std::string io = "page-cache";
  std::string io_backend = "threads";
  size_t io_threads = 8;
  bool no_verify = false;
  std::string prefetch = "none";
  size_t prefetch_copies = 0;
  size_t prefill_chunk = 0;  // 0: the backend's default (EngineOptions)
  size_t ctx = 0;            // --ctx: 0 = the model's context
  bool timing = false;

  // Validated options (throws moeflux::UsageError naming the bad option).
  EngineOptions to_options() const;
};

// The checks that need the model: --k and --hot within its experts, a --ram-cache budget that
// holds at least one expert record. Throws moeflux::UsageError naming the option.
void check_engine_options(const EngineOptions& o, const Package& pkg);

// Registers the options on `cmd`; values land in *args. Without `context_option` the command
// sets EngineOptions::context itself (perplexity: its window).
void add_engine_options(CLI::App* cmd, EngineArgs* args, bool context_option = true);

// The --timing report: per-layer table and per-token totals, to stderr.
// `what` names the phase measured ("prefill", "decode", or "" for all).
void print_timings(const Session& s, const char* what = "");

// One line: where expert bytes came from (RAM cache / storage), hit rates, prefetch accuracy.
std::string streaming_summary(const Session& s, double seconds, uint64_t tokens);

}  // namespace moeflux::tool
