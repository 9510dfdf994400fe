#include "engine_options.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "commands.hpp"
#include "core/error.hpp"

namespace moeflux::tool {

void add_engine_options(CLI::App* cmd, EngineArgs* a, bool context_option) {
  cmd->add_option("--backend", a->backend,
                  "Compute backend: cpu, cuda, or auto = cuda when a GPU is present (default: "
                  "$MOEFLUX_BACKEND, else auto)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  cmd->add_option("--gpu", a->gpu, "CUDA device index (default 0)")->check(integer_range(0, 1024));
  cmd->add_option("--gpu-mem", a->gpu_mem,
                  "GPU expert cache: bytes of experts kept on the GPU besides the working slots "
                  "(e.g. 0, 8G), a share of the model's experts (25%), or 'all' (every expert "
                  "resident; default 0)");
  cmd->add_option("--cpu-experts", a->cpu_experts,
                  "With --backend cuda and streamed experts: experts in the RAM cache that the "
                  "CPU computes while the GPU computes the rest, decode only. off = none "
                  "(default), all = every RAM-cache expert, auto = split by measured CPU and "
                  "copy rates (experimental)")
      ->check(CLI::IsMember({"auto", "all", "off"}));
  cmd->add_option("--gpu-reads", a->gpu_reads,
                  "With --backend cuda and streamed experts: how the GPU computes an expert in "
                  "the RAM cache. copy = copy it into the GPU cache first, in-place = its "
                  "kernels read it across PCIe where it lies (decode and small batches; the GPU "
                  "cache then takes only experts used more often than what they would evict), "
                  "auto = in-place where the GPU cache keeps experts or the CPU computes some "
                  "(default)")
      ->check(CLI::IsMember({"copy", "in-place", "auto"}));
  cmd->add_option("-t,--threads", a->threads, "Compute threads (default: all hardware threads)")
      ->check(integer_range(1, 4096));
  cmd->add_option("--k", a->k, "Experts per token (default: the model's top-k)")
      ->check(integer_range(1, 1 << 20));
  cmd->add_option("--ram-cache", a->ram_cache,
                  "RAM expert cache budget, e.g. 0, 512M, 4G (default 0 = none)");
  cmd->add_option("--cache-policy", a->cache_policy, "Eviction: lru, slru or lfu (default lfu)")
      ->check(CLI::IsMember({"lru", "slru", "lfu"}));
  cmd->add_option("--hot", a->hot,
                  "Keep each layer's N most used experts resident in the RAM cache");
  cmd->add_option("--io", a->io, "Expert reads: page-cache (buffered) or direct (O_DIRECT)")
      ->check(CLI::IsMember({"page-cache", "direct"}));
  cmd->add_option("--io-backend", a->io_backend, "threads (pread pool) or io_uring")
      ->check(CLI::IsMember({"threads", "io_uring"}));
  cmd->add_option("--io-threads", a->io_threads, "Reads in flight (threads backend; default 8)")
      ->check(integer_range(1, 256));
  cmd->add_flag("--no-verify", a->no_verify,
                "Do not check resident tensors and expert records against the package's "
                "checksums");
  cmd->add_option("--prefetch", a->prefetch, "none, temporal, lookahead or both (default none)")
      ->check(CLI::IsMember({"none", "temporal", "lookahead", "both"}));
  cmd->add_option("--prefetch-copies", a->prefetch_copies,
                  "Of each prefetch prediction, copy its N best guesses that are in the RAM "
                  "cache into the GPU cache ahead of use, once that kind of prediction has been "
                  "right at least half the time (default 0: prefetch stops at the RAM cache)")
      ->check(integer_range(0, 1 << 20));
  cmd->add_option("--prefill-chunk", a->prefill_chunk,
                  "Prompt tokens per forward pass (default 512 on a GPU, 256 on the CPU)")
      ->check(integer_range(1, 1 << 20));
  if (context_option)
    cmd->add_option("--ctx", a->ctx,
                    "Positions the session can hold; its KV cache is allocated for them "
                    "(default: the model's context)")
        ->check(integer_range(1, 1 << 30));
  cmd->add_flag("--timing", a->timing, "Print a per-layer time breakdown");
}

EngineOptions EngineArgs::to_options() const {
  EngineOptions o;
  try {  // every value here came from the command line: a bad one is a usage error
    o.backend = backend;
    if (o.backend.empty()) {
      const char* env = std::getenv("MOEFLUX_BACKEND");
      o.backend = env && *env ? env : "auto";
      if (o.backend != "cpu" && o.backend != "cuda" && o.backend != "auto")
        fail("MOEFLUX_BACKEND=" + o.backend + ": expected cpu, cuda or auto");
    }
    o.gpu_device = gpu;
    if (gpu_mem == "all") {
      o.gpu_cache_bytes = EngineOptions::kGpuMemAll;
    } else if (!gpu_mem.empty() && gpu_mem.back() == '%') {
      char* end = nullptr;
      const std::string num = gpu_mem.substr(0, gpu_mem.size() - 1);
      o.gpu_cache_percent = std::strtod(num.c_str(), &end);
      if (num.empty() || *end != '\0' || !(o.gpu_cache_percent > 0) || o.gpu_cache_percent > 100)
        fail("--gpu-mem " + gpu_mem + ": a percentage must be in (0, 100]");
    } else {
      o.gpu_cache_bytes = parse_byte_size(gpu_mem, "--gpu-mem");
    }
    o.cpu_experts = parse_cpu_experts_mode(cpu_experts);
    o.gpu_reads = parse_gpu_reads(gpu_reads);
    o.threads = threads;
    o.active_experts = k;
    o.prefill_chunk = prefill_chunk;
    o.context = ctx;
    o.timing = timing;
    o.stream.ram_cache_bytes = parse_byte_size(ram_cache, "--ram-cache");
    o.stream.policy = cache_policy;
    o.stream.hot_per_layer = hot;
    o.stream.prefetch = parse_prefetch_mode(prefetch);
    o.stream.prefetch_copies = prefetch_copies;
    o.stream.io.mode = parse_io_mode(io);
    o.stream.io.backend = parse_io_backend(io_backend);
    o.stream.io.threads = io_threads;
    o.stream.io.verify = !no_verify;
  } catch (const Error& e) {
    usage_fail(e.what());
  }
  if (hot > 0 && o.stream.ram_cache_bytes == 0)
    usage_fail("--hot needs a --ram-cache budget to keep experts in");
  if (prefetch_copies > 0 && o.stream.prefetch == PrefetchMode::None)
    usage_fail(
        "--prefetch-copies needs predictions to copy: --prefetch temporal, lookahead or both");
  return o;
}

void check_engine_options(const EngineOptions& o, const Package& pkg) {
  const ModelConfig& c = pkg.config();
  const size_t record = pkg.manifest().experts.record_bytes;
  if (o.active_experts > c.num_experts)
    usage_fail("--k " + std::to_string(o.active_experts) + " exceeds the model's " +
               std::to_string(c.num_experts) + " experts");
  if (o.stream.hot_per_layer > size_t(c.num_experts))
    usage_fail("--hot " + std::to_string(o.stream.hot_per_layer) + " exceeds the model's " +
               std::to_string(c.num_experts) + " experts per layer");
  if (o.stream.ram_cache_bytes > 0 && o.stream.ram_cache_bytes < record)
    usage_fail("--ram-cache: " + std::to_string(o.stream.ram_cache_bytes) +
               " bytes hold no expert record (" + human_bytes(double(record)) +
               " each); use 0 for no cache or at least one record");
}

void print_timings(const Session& s, const char* what) {
  const ForwardTimings& t = s.timings();
  if (t.tokens == 0) return;
  const double ms = 1e3 / static_cast<double>(t.tokens);  // seconds in all -> ms per token
  std::fprintf(stderr, "[timing] %s%sper token, ms (over %llu tokens)\n", what, *what ? ": " : "",
               static_cast<unsigned long long>(t.tokens));
  std::fprintf(stderr,
               "[timing] layer  attention   router  io-wait  experts prefetch    other    total\n");
  auto row = [&](const char* label, const LayerTimes& x) {
    const double other = x.wall - (x.attention + x.router + x.io_wait + x.experts + x.prefetch);
    std::fprintf(stderr, "[timing] %5s %10.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f\n", label,
                 ms * x.attention, ms * x.router, ms * x.io_wait, ms * x.experts, ms * x.prefetch,
                 ms * std::max(other, 0.0), ms * x.wall);
  };
  LayerTimes sum;
  for (size_t l = 0; l < t.layers.size(); ++l) {
    const LayerTimes& x = t.layers[l];
    row(std::to_string(l).c_str(), x);
    sum.attention += x.attention;
    sum.router += x.router;
    sum.io_wait += x.io_wait;
    sum.experts += x.experts;
    sum.prefetch += x.prefetch;
    sum.wall += x.wall;
  }
  row("all", sum);
  std::fprintf(stderr,
               "[timing] + embed %.3f, recorded steps launched %.3f, final norm + LM head %.3f = "
               "%.3f ms per token\n",
               ms * t.embed, ms * t.replay, ms * t.head,
               ms * (sum.wall + t.embed + t.replay + t.head));
}

std::string streaming_summary(const Session& s, double seconds, uint64_t tokens) {
  const ExpertStreamer& st = s.streamer();
  const LayerStreamStats tot = st.stats().total();
  const double rb = static_cast<double>(st.record_bytes());
  const double req = std::max<double>(1, tot.requests);
  const ReaderStats rs = st.reader().stats();
  char buf[512];
  std::snprintf(
      buf, sizeof buf,
      "experts/token %.2f MiB: RAM cache %.0f%%, prefetched %.0f%%, storage %.0f%% | "
      "storage %.2f MiB/token at %.2f GB/s (%s)",
      tot.requests * rb / std::max<double>(1, tokens) / 1048576.0, 100.0 * tot.cache_hits() / req,
      100.0 * tot.prefetch_hits / req, 100.0 * tot.misses / req,
      st.stats().storage_reads * rb / std::max<double>(1, tokens) / 1048576.0,
      rs.busy_seconds > 0 ? rs.bytes / rs.busy_seconds / 1e9 : 0.0, st.reader().describe());
  (void)seconds;
  return buf;
}

}  // namespace moeflux::tool
