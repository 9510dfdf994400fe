#include "model/host_experts.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace moeflux {

CpuExpertsMode parse_cpu_experts_mode(const std::string& s) {
  if (s == "off") return CpuExpertsMode::Off;
  if (s == "auto") return CpuExpertsMode::Auto;
  if (s == "all") return CpuExpertsMode::All;
  fail("--cpu-experts: unknown mode '" + s + "' (expected auto, off or all)");
}

const char* cpu_experts_mode_name(CpuExpertsMode m) {
  switch (m) {
    case CpuExpertsMode::Off:
      return "off";
    case CpuExpertsMode::Auto:
      return "auto";
    case CpuExpertsMode::All:
      return "all";
  }
  return "?";
}

size_t HybridPlanner::plan(std::span<const RecordPlace> where, std::span<const size_t> rows,
                           size_t record_bytes, std::span<uint8_t> on_host) const {
  MF_ASSERT(where.size() == rows.size() && on_host.size() == where.size());
  const double bytes = static_cast<double>(record_bytes);
  const double copy = bytes / copy_rate_;
  double gpu = 0, cpu = 0;  // seconds each side has taken on
  for (size_t i = 0; i < where.size(); ++i) {
    on_host[i] = 0;
    if (where[i] == RecordPlace::Storage) gpu += copy;
  }
  size_t n = 0;
  for (size_t i = 0; i < where.size(); ++i) {
    if (where[i] != RecordPlace::Ram || rows[i] > kMaxRowsPerRecord || mode_ == CpuExpertsMode::Off)
      continue;
    const double on_cpu =
        (n == 0 ? cpu_overhead_ : 0) + bytes * static_cast<double>(rows[i]) / cpu_rate_;
    if (mode_ == CpuExpertsMode::All || cpu + on_cpu <= gpu + copy) {
      on_host[i] = 1;
      cpu += on_cpu;
      ++n;
    } else {
      gpu += copy;
    }
  }
  return n;
}

size_t HybridPlanner::plan_layer(std::span<const RecordPlace> where, std::span<const size_t> rows,
                                 size_t record_bytes, std::span<uint8_t> on_host) {
  const size_t n = plan(where, rows, record_bytes, on_host);
  if (mode_ != CpuExpertsMode::Auto) return n;
  if (n > 0) {  // the CPU won a share on its own
    idle_layers_ = 0;
    probe_interval_ = kProbeFirst;
    return n;
  }
  // The record the CPU could take with the fewest rows (the cheapest probe), if any.
  size_t best = where.size();
  for (size_t i = 0; i < where.size(); ++i)
    if (where[i] == RecordPlace::Ram && rows[i] <= kMaxRowsPerRecord &&
        (best == where.size() || rows[i] < rows[best]))
      best = i;
  if (best == where.size()) return 0;  // nothing it could have taken: not a lost split
  if (++idle_layers_ < probe_interval_) return 0;
  idle_layers_ = 0;
  // Back off once the probes are measured (past the CPU's warm-up shares) and the last one did
  // not make the CPU look faster; while they keep raising its rate, keep probing as often.
  if (cpu_shares_ > kCpuWarmup && !(cpu_rate_ > 1.05 * rate_at_probe_))
    probe_interval_ = std::min(2 * probe_interval_, kProbeMax);
  rate_at_probe_ = cpu_rate_;
  ++probes_;
  on_host[best] = 1;
  return 1;
}

void HybridPlanner::observe(double& rate, double bytes, double seconds) {
  if (!(bytes > 0) || !(seconds > 1e-7)) return;  // nothing measured, or below timer noise
  constexpr double kWeight = 0.2;                 // of the newest observation
  rate = (1 - kWeight) * rate + kWeight * (bytes / seconds);
}

void HybridPlanner::observe_cpu(double bytes, double seconds) {
  if (!(bytes > 0) || !(seconds > 1e-7)) return;
  // The first shares also pay for first use (the CPU backend's scratch allocated and faulted in
  // on every worker): not the CPU's rate. Read as its rate, they made the planner give the CPU
  // nothing more for the rest of a run (docs/PERF.md, 2026-12-04).
  if (++cpu_shares_ <= kCpuWarmup) return;
  // Once fitted (over kCpuWarmup more), a share that stalled (the host busy elsewhere) counts as
  // at most kStall times what the model predicts, so that one does not swing the fit.
  constexpr double kStall = 2;
  const double predicted = cpu_overhead_ + bytes / cpu_rate_;
  if (cpu_shares_ > 2 * kCpuWarmup) {
    // A share done in under 1/kStale of the prediction means the fit describes a CPU that is
    // gone (a slow start, the host busy then): restart it from this share, its time all charged
    // to its bytes (a rate no faster than measured). Weighting would not do: a line through
    // old shares of several sizes keeps its slope however little weight they keep, and the
    // probes that would correct it are all one record (docs/PERF.md, 2026-12-05).
    constexpr double kStale = 2;
    if (kStale * seconds < predicted) {
      cpu_fit_ = {};
      cpu_overhead_ = 0;
      cpu_rate_ = bytes / seconds;
      return;
    }
    seconds = std::min(seconds, kStall * predicted);
  }
  // seconds = overhead + bytes / rate, fitted by weighted least squares; an observation's
  // weight decays by kKeep per newer one (a memory of ~1 / (1 - kKeep) layers).
  constexpr double kKeep = 0.97;
  LineFit& f = cpu_fit_;
  f.w = kKeep * f.w + 1;
  f.x = kKeep * f.x + bytes;
  f.y = kKeep * f.y + seconds;
  f.xx = kKeep * f.xx + bytes * bytes;
  f.xy = kKeep * f.xy + bytes * seconds;
  const double mx = f.x / f.w, my = f.y / f.w;
  const double var = f.xx / f.w - mx * mx, cov = f.xy / f.w - mx * my;
  // The line is trusted when the shares' sizes spread (by 10% of their mean or more) and it
  // slopes up; its overhead is kept within [0, the mean time].
  if (f.w >= 4 && var > 0.01 * mx * mx && cov > 0) {
    const double slope = cov / var;
    cpu_overhead_ = std::clamp(my - slope * mx, 0.0, my);
    cpu_rate_ = mx / (my - cpu_overhead_);
    return;
  }
  // Shares all alike: the overhead cannot be told from the rate; keep the overhead, follow the
  // rate of the rest.
  const double t = seconds - cpu_overhead_;
  observe(cpu_rate_, bytes, t > 0.1 * seconds ? t : seconds);
}

HostExperts::HostExperts(std::unique_ptr<Backend> cpu_backend, CpuExpertsMode mode, size_t h,
                         size_t slots_per_token)
    : cpu(std::move(cpu_backend)), planner(mode), hidden(h) {
  x.resize(kMaxRows * hidden);
  out.resize(kMaxRows * slots_per_token * hidden);
}

}  // namespace moeflux
