// moeflux cache-sim: replays a routing trace through the engine's own expert streamer (with a
// reader that completes instantly) to compare eviction policies, budgets and temporal prefetch
// on real routing versus uniform random routing. Look-ahead prefetch needs hidden states and
// cannot be replayed from a trace: measure it with `moeflux bench`.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <sstream>

#include "commands.hpp"
#include "core/error.hpp"
#include "experts/expert_streamer.hpp"
#include "experts/routing_trace.hpp"

namespace moeflux::tool {

namespace {

// Completes every read at once without touching the destination.
class InstantReader final : public ExpertReader {
 public:
  explicit InstantReader(size_t record_bytes) { record_bytes_ = record_bytes; }
  void submit(std::span<ReadOp* const> ops) override {
    for (ReadOp* op : ops) op->state.store(ReadOp::Done, std::memory_order_release);
    stats_.reads += ops.size();
    stats_.bytes += ops.size() * record_bytes_;
  }
  void wait(ReadOp&) override {}
  const char* describe() const override { return "instant (simulation)"; }
  ReaderStats stats() const override { return stats_; }

 private:
  ReaderStats stats_;
};

struct SimResult {
  double hit_rate = 0;           // RAM + prefetch hits / requests
  double storage_per_token = 0;  // records read from storage per token
  double prefetch_accuracy = 0;
};

SimResult simulate(const Package& pkg, const RoutingTrace& trace, size_t budget,
                   const std::string& policy, PrefetchMode pf) {
  StreamOptions o;
  o.ram_cache_bytes = budget;
  o.policy = policy;
  o.prefetch = pf;
  o.max_active = trace.top_k;
  o.reader_factory = [](const Package& p, const ReaderOptions&) {
    return std::make_unique<InstantReader>(p.manifest().experts.record_bytes);
  };
  ExpertStreamer s(pkg, o);
  std::vector<const uint8_t*> out;
  std::vector<std::vector<int>> prev(trace.num_layers);
  for (const auto& tok : trace.tokens) {
    for (int l = 0; l < trace.num_layers; ++l) {
      if (tok[l].empty()) continue;
      if (pf == PrefetchMode::Temporal && !prev[l].empty())
        s.prefetch(l, prev[l], PrefetchKind::Temporal);
      s.acquire(l, tok[l], out);
      s.release();
      prev[l] = tok[l];
    }
  }
  const LayerStreamStats t = s.stats().total();
  SimResult r;
  r.hit_rate = double(t.cache_hits() + t.prefetch_hits) / std::max<uint64_t>(1, t.requests);
  r.storage_per_token = double(s.stats().storage_reads) / std::max<size_t>(1, trace.tokens.size());
  const PrefetchStats& p = s.stats().prefetch[0];
  r.prefetch_accuracy = p.predictions ? double(p.correct) / p.predictions : 0;
  return r;
}

// One --budgets entry: a size (512M) or a percentage of all expert bytes (`all`). A budget above
// `all` is simulated as `all` (the cache then holds every expert).
size_t parse_budget(const std::string& b, double all) {
  double bytes = 0;
  if (!b.empty() && b.back() == '%') {
    double pct = -1;
    const char* end = b.data() + b.size() - 1;
    const auto [p, ec] = std::from_chars(b.data(), end, pct);
    if (ec != std::errc() || p != end || !(pct >= 0 && pct <= 100))
      usage_fail("--budgets: '" + printable(b) + "' is not a percentage from 0% to 100%");
    bytes = all * pct / 100;
  } else {
    try {
      bytes = double(parse_byte_size(b, "--budgets"));
    } catch (const Error& e) {
      usage_fail(e.what());
    }
  }
  return static_cast<size_t>(std::min(bytes, all));
}

Runner add_cache_sim(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "cache-sim", "Replay a routing trace: hit rates of cache policies and temporal prefetch");
  struct Args {
    std::string model, trace, budgets = "5%,10%,25%,50%";
    uint64_t seed = 1;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("-m,--model", a->model, "The package the trace was recorded on")->required();
  cmd->add_option("--trace", a->trace, "Routing trace (moeflux logits --routing-trace)")
      ->required();
  cmd->add_option(
      "--budgets", a->budgets,
      "RAM cache budgets: sizes (512M) or % of all expert bytes (default 5%,10%,25%,50%)");
  cmd->add_option("--seed", a->seed, "Seed of the random-routing comparison");
  return [a] {
    const Package pkg = Package::open(a->model);
    const ModelConfig& c = pkg.config();
    const RoutingTrace real = RoutingTrace::load(a->trace);
    if (real.num_layers != c.num_layers || real.num_experts != c.num_experts)
      fail(a->trace + ": trace shape (" + std::to_string(real.num_layers) + " layers, " +
           std::to_string(real.num_experts) + " experts) does not match the package");
    const RoutingTrace rnd = RoutingTrace::random(c.num_layers, c.num_experts, real.top_k,
                                                  c.layer_is_moe, real.tokens.size(), a->seed);
    const double all =
        double(pkg.manifest().experts.record_bytes) * c.num_experts * c.num_moe_layers();
    std::vector<std::pair<std::string, size_t>> budgets;
    std::stringstream ss(a->budgets);
    std::string b;
    while (std::getline(ss, b, ',')) budgets.emplace_back(b, parse_budget(b, all));
    std::printf(
        "trace %s: %zu tokens, K=%d; all experts %.1f MiB; working slots 3K besides the budget\n",
        a->trace.c_str(), real.tokens.size(), real.top_k, all / 1048576);
    std::printf("%-8s %-8s %-9s %14s %14s %12s\n", "routing", "budget", "policy", "hit rate",
                "reads/token", "pf accuracy");
    for (const auto& [label, trace] :
         {std::pair<const char*, const RoutingTrace*>{"real", &real}, {"random", &rnd}})
      for (const auto& [bl, bytes] : budgets)
        for (const char* policy : {"lru", "slru", "lfu"})
          for (PrefetchMode pf : {PrefetchMode::None, PrefetchMode::Temporal}) {
            const SimResult r = simulate(pkg, *trace, bytes, policy, pf);
            std::printf("%-8s %-8s %-9s %13.1f%% %14.2f %11.1f%%\n", label, bl.c_str(),
                        (std::string(policy) + (pf == PrefetchMode::Temporal ? "+tp" : "")).c_str(),
                        100 * r.hit_rate, r.storage_per_token, 100 * r.prefetch_accuracy);
          }
    return 0;
  };
}

const CommandRegistration registration(65, add_cache_sim);

}  // namespace

}  // namespace moeflux::tool
