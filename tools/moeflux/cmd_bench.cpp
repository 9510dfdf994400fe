// moeflux bench: prefill and decode speed of a package with the streaming options, where the
// expert bytes came from, cache and prefetch hit rates, and the achieved bandwidth against the
// ceilings measured on this machine.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <random>

#include "commands.hpp"
#include "core/argmax.hpp"
#include "core/crc32c.hpp"
#include "core/error.hpp"
#include "core/output_file.hpp"
#include "engine_options.hpp"
#include "experts/ceilings.hpp"
#include "model_dir.hpp"
#include "sample/sampler.hpp"

namespace moeflux::tool {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

struct RunResult {
  double prefill_tok_s = 0, decode_tok_s = 0;
  json stream;  // decode-phase streaming counters
};

json layer_stats_json(const ExpertStreamer& streamer, uint64_t tokens) {
  const StreamStats& st = streamer.stats();
  const double record_bytes = static_cast<double>(streamer.record_bytes());
  const size_t n_tiers = streamer.tier_count();
  json layers = json::array();
  for (size_t l = 0; l < st.layers.size(); ++l) {
    const LayerStreamStats& s = st.layers[l];
    if (s.requests == 0) continue;
    json tier_rates = json::object();
    for (size_t t = 0; t < n_tiers; ++t)
      tier_rates[streamer.tier(t).name()] = double(s.tier_hits[t]) / s.requests;
    layers.push_back(
        {{"layer", l},
         {"requests", s.requests},
         {"cache_hit_rate", double(s.cache_hits()) / s.requests},
         {"tier_hit_rate", tier_rates},
         {"prefetch_hit_rate", double(s.prefetch_hits) / s.requests},
         {"miss_rate", double(s.misses) / s.requests},
         {"io_wait_ms_per_token", 1e3 * s.io_wait_seconds / std::max<uint64_t>(tokens, 1)}});
  }
  const LayerStreamStats t = st.total();
  const double req = std::max<double>(1, t.requests);
  const double per_tok = 1.0 / std::max<uint64_t>(tokens, 1);
  json prefetch = json::object();
  const char* names[2] = {"temporal", "lookahead"};
  for (int k = 0; k < 2; ++k) {
    const PrefetchStats& p = st.prefetch[k];
    prefetch[names[k]] = {
        {"predictions", p.predictions},
        {"correct", p.correct},
        {"accuracy", p.predictions ? double(p.correct) / p.predictions : 0.0},
        {"reads", p.reads},
        {"wasted_reads", p.wasted_reads},
        {"wasted_bytes_per_token", double(p.wasted_reads) * record_bytes * per_tok},
        {"copies", p.copies},
        {"wasted_copies", p.wasted_copies}};
  }
  json hit_rate = json::object(), bytes = json::object(), tiers = json::array();
  bytes["requested"] = double(t.requests) * record_bytes * per_tok;
  for (size_t i = 0; i < n_tiers; ++i) {
    const CacheTier& tier = streamer.tier(i);
    const TierStats& ts = st.tiers[i];
    hit_rate[tier.name()] = t.tier_hits[i] / req;
    bytes[tier.name() + "_cache"] = double(t.tier_hits[i]) * record_bytes * per_tok;
    const double promoted = i + 1 < n_tiers ? double(ts.fills) * record_bytes : 0.0;
    tiers.push_back(
        {{"name", tier.name()},
         {"memory", tier.memory().kind()},
         {"budget_bytes", double(tier.budget_slots()) * record_bytes},
         {"slots", tier.total_slots()},
         {"hits", ts.hits},
         {"fills", ts.fills},
         {"evictions", ts.evictions},
         {"promoted_bytes_per_token", promoted * per_tok},
         {"promotion_gb_s", ts.copy_seconds > 0 ? promoted / ts.copy_seconds / 1e9 : 0.0},
         // Copies into this tier timed where they ran (a GPU tier: host->device over PCIe).
         {"copied_bytes_per_token", double(ts.copied_bytes) * per_tok},
         {"transfer_gb_s",
          ts.transfer_seconds > 0 ? ts.transfer_bytes / ts.transfer_seconds / 1e9 : 0.0},
         // Compute that read slower tiers in place (--gpu-reads in-place), timed where it ran.
         {"read_in_place_gb_s",
          ts.read_seconds > 0 ? ts.read_bytes / ts.read_seconds / 1e9 : 0.0}});
  }
  hit_rate["prefetch"] = t.prefetch_hits / req;
  hit_rate["miss"] = t.misses / req;
  hit_rate["cpu_computed"] = t.host_computed / req;   // of the RAM-tier hits: left for the CPU
  hit_rate["read_in_place"] = t.read_in_place / req;  // left where the GPU reads them (--gpu-reads)
  bytes["read_in_place"] = double(t.read_in_place) * record_bytes * per_tok;
  bytes["prefetched"] = double(t.prefetch_hits) * record_bytes * per_tok;
  bytes["storage"] = double(st.storage_reads) * record_bytes * per_tok;
  return {{"tokens", tokens},
          {"requests", t.requests},
          {"hit_rate", hit_rate},
          {"bytes_per_token", bytes},
          {"io_wait_ms_per_token", 1e3 * t.io_wait_seconds * per_tok},
          {"tiers", tiers},
          {"prefetch", prefetch},
          {"layers", layers}};
}

Runner add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench",
      "Measure prefill/decode speed, expert traffic per tier, hit rates, GB/s vs ceilings");
  struct Args {
    std::string model, json_out;
    int prompt_len = 128, gen_len = 64, repeat = 3;
    uint64_t seed = 1;
    bool no_ceilings = false;
    bool keep_cache = false;
    bool sample = false;
    EngineArgs engine;
  };
  auto a = std::make_shared<Args>();
  add_model_option(cmd, &a->model);
  cmd->add_option("--prompt-len", a->prompt_len, "Prompt tokens (default 128)")
      ->check(integer_range(1, 1 << 20));
  cmd->add_option("--gen-len", a->gen_len, "Decoded tokens (default 64)")
      ->check(integer_range(1, 1 << 20));
  cmd->add_option("--repeat", a->repeat, "Repeats; medians are reported (default 3)")
      ->check(integer_range(1, 1000));
  cmd->add_option("--seed", a->seed, "Seed of the random token ids (default 1)");
  cmd->add_option("--json", a->json_out, "Write the full report as JSON");
  cmd->add_flag("--no-ceilings", a->no_ceilings, "Skip measuring the storage and memory ceilings");
  cmd->add_flag("--sample", a->sample,
                "Decode by sampling with the default options (temperature 0.7, top-k 40, top-p "
                "0.95, min-p 0.05; seeded by --seed) instead of the greedy pick, so that the "
                "sampler's host time counts as in `run`");
  cmd->add_flag("--keep-cache", a->keep_cache,
                "One engine for all repeats: later repeats find the expert cache warm (a "
                "server's steady state); default: every repeat starts cold");
  add_engine_options(cmd, &a->engine);
  return [a] {
    if (!a->json_out.empty()) check_output_path(a->json_out, "--json");
    EngineOptions opts = a->engine.to_options();
    opts.timing = true;  // the host time per token is always reported; the tables on --timing
    auto model =
        Model::open(resolve_model_dir(a->model), {.verify_resident = !a->engine.no_verify});
    check_engine_options(opts, model->package());
    const ModelConfig& c = model->config();
    if (a->prompt_len + a->gen_len > c.max_position_embeddings)
      usage_fail("--prompt-len + --gen-len exceed the model's " +
                 std::to_string(c.max_position_embeddings) + " positions");
    std::mt19937_64 rng(a->seed);
    std::uniform_int_distribution<int> id(0, c.vocab_size - 1);
    std::vector<int> prompt(a->prompt_len);
    for (int& t : prompt) t = id(rng);

    std::vector<double> prefill, decode, host_layers_ms, host_head_ms, host_other_ms;
    json hybrid;  // the CPU's share of the expert compute in the last decode (--cpu-experts)
    DeviceMemory device_memory;
    Backend::RecordingStats steps;  // recorded decode steps during the last decode
    json last_stream;
    double last_decode_seconds = 0;
    uint64_t storage_bytes = 0, verified = 0;
    double reader_busy = 0, verify_seconds = 0;
    // --keep-cache: one engine for every repeat (its expert cache stays warm, as a server's
    // would); otherwise each repeat starts with a new engine and a cold cache.
    std::unique_ptr<Engine> shared;
    std::string backend_name;
    size_t resident_bytes = 0;
    bool reads_in_place = false;  // --gpu-reads as it applied (auto decides per engine)
    HostReadRates read_rates;     // what auto weighed (zeros: nothing to decide)
    bool admit_copies = false;    // StreamOptions::admit_copies (MOEFLUX_ADMIT_COPIES=1)
    if (a->keep_cache) shared = std::make_unique<Engine>(*model, opts);
    for (int r = 0; r < a->repeat; ++r) {
      std::unique_ptr<Engine> own;
      if (!shared) own = std::make_unique<Engine>(*model, opts);
      Engine& engine = shared ? *shared : *own;
      backend_name = engine.backend().name();
      resident_bytes = engine.resident_experts() ? engine.resident_experts()->bytes : 0;
      reads_in_place = engine.reads_in_place();
      read_rates = engine.host_read_rates();
      admit_copies = engine.streamer().options().admit_copies;
      engine.reset_timings();
      Session s(engine);
      auto t0 = Clock::now();
      const std::vector<float>* logits = &s.eval_prompt(prompt);
      const double tp = std::chrono::duration<double>(Clock::now() - t0).count();
      if (r + 1 == a->repeat && a->engine.timing) print_timings(s, "prefill");
      s.engine().reset_timings();
      s.streamer().reset_stats();
      const ReaderStats before = s.streamer().reader().stats();
      const HostExperts* hx = engine.host_experts();
      const double cpu_bytes0 = hx ? hx->cpu_bytes : 0, cpu_seconds0 = hx ? hx->cpu_seconds : 0;
      const Backend::RecordingStats steps0 = engine.backend().recording_stats();
      t0 = Clock::now();
      // The model's own continuation: sampled (--sample) over the sequence so far, or greedy;
      // after the prompt the engine picks where the logits are — the greedy pick, or the k best
      // the sampler draws from — as `run` does.
      std::optional<Sampler> sampler;
      if (a->sample) {
        SamplerOptions so;
        so.seed = a->seed + uint64_t(r);
        sampler.emplace(so);
      }
      std::vector<int> sequence = prompt;
      LogitsPick pick;
      pick.top_k = sampler ? sampler->top_k_candidates(size_t(s.model().config().vocab_size)) : 0;
      const bool engine_picks = !sampler || pick.top_k > 0;
      bool picked = false;  // the first token is picked from the prompt's logits on the host
      for (int g = 0; g < a->gen_len; ++g) {
        int next;
        if (picked)
          next = pick.top_k > 0 ? sampler->sample_top_k(pick.best) : pick.id;
        else
          next = sampler ? sampler->sample(*logits, sequence) : static_cast<int>(argmax(*logits));
        sequence.push_back(next);
        logits = &s.eval_token(next, engine_picks ? &pick : nullptr);
        picked = engine_picks;
      }
      const double td = std::chrono::duration<double>(Clock::now() - t0).count();
      {
        const Backend::RecordingStats s1 = engine.backend().recording_stats();
        steps = {s1.recorded - steps0.recorded, s1.replayed - steps0.replayed,
                 s1.failed - steps0.failed, s1.last_failure};
      }
      prefill.push_back(a->prompt_len / tp);
      decode.push_back(a->gen_len / td);
      std::fprintf(stderr, "[bench] run %d/%d: prefill %.1f tok/s, decode %.2f tok/s\n", r + 1,
                   a->repeat, prefill.back(), decode.back());
      last_stream = layer_stats_json(s.streamer(), a->gen_len);
      if (hx) {
        const double b = hx->cpu_bytes - cpu_bytes0, sec = hx->cpu_seconds - cpu_seconds0;
        hybrid = {{"mode", cpu_experts_mode_name(hx->planner.mode())},
                  {"threads", hx->cpu->threads()},
                  {"cpu_bytes_per_token", b / a->gen_len},
                  {"cpu_gb_s", sec > 0 ? b / sec / 1e9 : 0.0},
                  {"cpu_ms_per_token", 1e3 * sec / a->gen_len},
                  {"planner_cpu_gb_s", hx->planner.cpu_rate() / 1e9},
                  {"planner_cpu_overhead_us", hx->planner.cpu_overhead() * 1e6},
                  {"planner_copy_gb_s", hx->planner.copy_rate() / 1e9},
                  {"planner_probes", hx->planner.probes()}};
      }
      const ReaderStats after = s.streamer().reader().stats();
      storage_bytes = after.bytes - before.bytes;
      reader_busy = after.busy_seconds - before.busy_seconds;
      verified = after.verified - before.verified;
      verify_seconds = after.verify_seconds - before.verify_seconds;
      last_decode_seconds = td;
      if (r + 1 == a->repeat && a->engine.timing) print_timings(s, "decode");
      {  // host time per decoded token: the layers (for a GPU backend: issuing their work, which
         // runs behind), and the head, which ends by waiting for the device's results
        const ForwardTimings& ft = s.timings();
        double layers_s = ft.embed + ft.replay;
        for (const LayerTimes& l : ft.layers) layers_s += l.wall;
        const double n = static_cast<double>(std::max<uint64_t>(ft.tokens, 1));
        host_layers_ms.push_back(1e3 * layers_s / n);
        host_head_ms.push_back(1e3 * ft.head / n);
        // The rest of a decoded token's time: the pick over the logits, the session.
        host_other_ms.push_back(
            std::max(0.0, 1e3 * (td / a->gen_len) - host_layers_ms.back() - host_head_ms.back()));
      }
      device_memory = engine.backend().device_memory();
    }

    json report;
    report["model"] = model->package().dir();
    report["family"] = family_name(c.family);
    report["options"] = {{"threads", opts.threads},
                         {"k", a->engine.k ? a->engine.k : c.top_k},
                         {"ram_cache_bytes", opts.stream.ram_cache_bytes},
                         {"cache_policy", opts.stream.policy},
                         {"hot", opts.stream.hot_per_layer},
                         {"io", a->engine.io},
                         {"io_backend", a->engine.io_backend},
                         {"io_threads", opts.stream.io.threads},
                         {"verify", opts.stream.io.verify},
                         {"prefetch", a->engine.prefetch},
                         {"gpu_reads", gpu_reads_name(opts.gpu_reads)},
                         {"gpu_reads_in_place", reads_in_place},
                         {"admit_copies", admit_copies},
                         {"host_read_copy_gb_s", read_rates.copy / 1e9},
                         {"host_read_in_place_gb_s", read_rates.in_place / 1e9},
                         {"prompt_len", a->prompt_len},
                         {"gen_len", a->gen_len},
                         {"repeat", a->repeat},
                         {"keep_cache", a->keep_cache},
                         {"sample", a->sample}};
    report["prefill_tok_s"] = {{"median", median(prefill)}, {"runs", prefill}};
    report["backend"] = backend_name;
    report["resident_expert_bytes"] = resident_bytes;
    report["decode_tok_s"] = {{"median", median(decode)}, {"runs", decode}};
    report["decode_streaming"] = last_stream;
    if (!hybrid.is_null()) report["cpu_experts"] = hybrid;
    report["recorded_steps"] = {{"recorded", steps.recorded},
                                {"replayed", steps.replayed},
                                {"abandoned", steps.failed},
                                {"last_abandoned_because", steps.last_failure}};
    report["host_ms_per_token"] = {{"layers", median(host_layers_ms)},
                                   {"head_and_wait", median(host_head_ms)},
                                   {"outside_the_pass", median(host_other_ms)}};
    if (device_memory.total > 0)
      report["device_memory"] = {{"used_bytes", device_memory.used},
                                 {"total_bytes", device_memory.total}};
    // What each position adds to the session's cache (MLA: latent + rope key per layer).
    report["kv_cache_bytes_per_token"] = c.kv_bytes_per_token();
    // Achieved storage bandwidth during the last decode: over its wall time (what the token
    // rate needs) and over the time reads were actually outstanding (what the device gave).
    const double wall_gbs = storage_bytes / std::max(last_decode_seconds, 1e-12) / 1e9;
    // ...and while compute was blocked on them (the rate the reads ran at when they mattered).
    const double waited = last_stream["io_wait_ms_per_token"].get<double>() * a->gen_len / 1e3;
    const double wait_gbs = waited > 0 ? storage_bytes / waited / 1e9 : 0.0;
    report["storage"] = {{"bytes", storage_bytes},
                         {"gb_s_over_decode_wall", wall_gbs},
                         {"gb_s_while_waiting", wait_gbs},
                         {"reader_busy_seconds", reader_busy},
                         {"verified_records", verified},
                         {"verify_ms_per_token", 1e3 * verify_seconds / a->gen_len}};
    if (!a->no_ceilings) {
      std::fprintf(stderr, "[bench] measuring ceilings...\n");
      const std::vector<std::string> files = package_expert_files(model->package());
      CeilingOptions co;
      co.threads = static_cast<int>(std::max<size_t>(opts.stream.io.threads, 1));
      const Ceiling direct = measure_direct_read(files, co);
      const Ceiling warm = measure_page_cache_read(files, co);
      CeilingOptions one = co;
      one.threads = 1;
      const Ceiling copy1 = measure_memcpy(one);
      CeilingOptions all = co;
      all.threads = 0;
      const Ceiling copyn = measure_memcpy(all);
      const int k = a->engine.k ? a->engine.k : c.top_k;
      const Ceiling batches = measure_expert_batches(model->package(), opts.stream.io, k, co);
      auto cj = [](const Ceiling& c) {
        return json{{"measured", c.measured}, {"gb_s", c.gb_per_s},   {"bytes", c.bytes},
                    {"seconds", c.seconds},   {"threads", c.threads}, {"note", c.note}};
      };
      report["ceilings"] = {{"direct_read", cj(direct)},     {"page_cache_read", cj(warm)},
                            {"memcpy_1_thread", cj(copy1)},  {"memcpy_all_threads", cj(copyn)},
                            {"expert_batches", cj(batches)}, {"memcpy_gb_s", copyn.gb_per_s}};
      const bool is_direct = opts.stream.io.mode == IoMode::Direct;
      const Ceiling& ceiling = is_direct ? direct : warm;
      report["storage"]["ceiling_gb_s"] = ceiling.gb_per_s;
      report["storage"]["ceiling_name"] = is_direct ? "direct sequential read" : "page-cache read";
      report["storage"]["ratio_to_ceiling"] =
          ceiling.gb_per_s > 0 ? wall_gbs / ceiling.gb_per_s : 0.0;
      report["storage"]["ratio_while_waiting_to_ceiling"] =
          ceiling.gb_per_s > 0 ? wait_gbs / ceiling.gb_per_s : 0.0;
      report["storage"]["expert_batch_ceiling_gb_s"] = batches.gb_per_s;
      report["storage"]["ratio_while_waiting_to_expert_batches"] =
          batches.gb_per_s > 0 ? wait_gbs / batches.gb_per_s : 0.0;
      report["storage"]["ratio_while_waiting_to_memcpy"] =
          copyn.gb_per_s > 0 ? wait_gbs / copyn.gb_per_s : 0.0;
      std::fprintf(
          stderr, "[bench] ceilings: direct %s; page cache %s; memcpy %s / %s; expert batches %s\n",
          describe(direct).c_str(), describe(warm).c_str(), describe(copy1).c_str(),
          describe(copyn).c_str(), describe(batches).c_str());
    }

    const json& bpt = last_stream["bytes_per_token"];
    std::printf("decode   %.2f tok/s (median of %d), prefill %.1f tok/s (%s backend)\n",
                median(decode), a->repeat, median(prefill), backend_name.c_str());
    if (resident_bytes > 0)
      std::printf("experts  all resident in %s memory (%s), loaded once: no streaming\n",
                  backend_name.c_str(), human_bytes(double(resident_bytes)).c_str());
    std::printf(
        "host     %.3f ms/token in the layers%s, %.3f in the head (final norm, LM head, "
        "logits), %.3f outside the pass (%s, session)\n",
        median(host_layers_ms), backend_name == "cpu" ? "" : " (issuing the device's work)",
        median(host_head_ms), median(host_other_ms), a->sample ? "sampling" : "greedy pick");
    if (steps.recorded + steps.replayed + steps.failed > 0)
      std::printf(
          "graphs   %llu of %d decode steps replayed from a recording (%llu recorded, %llu "
          "abandoned and issued op by op%s%s)\n",
          static_cast<unsigned long long>(steps.replayed), a->gen_len,
          static_cast<unsigned long long>(steps.recorded),
          static_cast<unsigned long long>(steps.failed), steps.failed ? ": " : "",
          steps.failed ? steps.last_failure.c_str() : "");
    if (device_memory.total > 0)
      std::printf("gpu mem  %s in use of %s (the whole device, after the last run)\n",
                  human_bytes(double(device_memory.used)).c_str(),
                  human_bytes(double(device_memory.total)).c_str());
    std::printf("kv cache %.1f KiB/token (float32, all layers)\n",
                static_cast<double>(c.kv_bytes_per_token()) / 1024);
    std::printf("experts  %.2f MiB/token requested:", bpt["requested"].get<double>() / 1048576);
    std::string hits;
    for (const json& tier : last_stream["tiers"]) {
      const std::string name = tier["name"].get<std::string>();
      std::printf(" %s cache %.2f,", name.c_str(), bpt[name + "_cache"].get<double>() / 1048576);
      char rate[96];
      std::snprintf(rate, sizeof rate, "%s %.1f%%, ", name.c_str(),
                    100 * last_stream["hit_rate"][name].get<double>());
      hits += rate;
    }
    std::printf(" prefetched %.2f, storage %.2f MiB/token\n",
                bpt["prefetched"].get<double>() / 1048576, bpt["storage"].get<double>() / 1048576);
    std::printf("hits     %sprefetch %.1f%%, miss %.1f%%; io wait %.3f ms/token\n", hits.c_str(),
                100 * last_stream["hit_rate"]["prefetch"].get<double>(),
                100 * last_stream["hit_rate"]["miss"].get<double>(),
                last_stream["io_wait_ms_per_token"].get<double>());
    if (!hybrid.is_null())
      std::printf(
          "cpu      --cpu-experts %s: %.1f%% of expert requests computed on the CPU, %.2f "
          "MiB/token at %.2f GB/s (%.3f ms/token, %zu threads; planner: CPU %.1f GB/s + %.0f "
          "us a layer, copies %.1f GB/s, %llu probes of a CPU left without a share)\n",
          hybrid["mode"].get<std::string>().c_str(),
          100 * last_stream["hit_rate"]["cpu_computed"].get<double>(),
          hybrid["cpu_bytes_per_token"].get<double>() / 1048576, hybrid["cpu_gb_s"].get<double>(),
          hybrid["cpu_ms_per_token"].get<double>(), hybrid["threads"].get<size_t>(),
          hybrid["planner_cpu_gb_s"].get<double>(), hybrid["planner_cpu_overhead_us"].get<double>(),
          hybrid["planner_copy_gb_s"].get<double>(),
          static_cast<unsigned long long>(hybrid["planner_probes"].get<uint64_t>()));
    if (read_rates.copy > 0)
      std::printf(
          "bus      host memory read by the copy engine at %.1f GB/s, by kernels in place at "
          "%.1f GB/s (%.2fx): --gpu-reads %s -> %s\n",
          read_rates.copy / 1e9, read_rates.in_place / 1e9, read_rates.in_place / read_rates.copy,
          gpu_reads_name(opts.gpu_reads), reads_in_place ? "in place" : "copy");
    if (bpt["read_in_place"].get<double>() > 0)
      std::printf(
          "in place %.2f MiB/token read by the GPU where they lie in the RAM cache at %.2f "
          "GB/s (device-timed, with the GPU's hits computed alongside; %.1f%% of expert "
          "requests)\n",
          bpt["read_in_place"].get<double>() / 1048576,
          last_stream["tiers"][0]["read_in_place_gb_s"].get<double>(),
          100 * last_stream["hit_rate"]["read_in_place"].get<double>());
    for (const json& tier : last_stream["tiers"])
      if (tier["transfer_gb_s"].get<double>() > 0)
        std::printf("copies   into the %s tier: %.2f MiB/token at %.2f GB/s (device-timed)\n",
                    tier["name"].get<std::string>().c_str(),
                    tier["copied_bytes_per_token"].get<double>() / 1048576,
                    tier["transfer_gb_s"].get<double>());
    for (const char* k : {"temporal", "lookahead"}) {
      const json& p = last_stream["prefetch"][k];
      if (p["predictions"].get<uint64_t>() == 0) continue;
      std::printf(
          "prefetch %-9s accuracy %.1f%%, %llu reads (%llu wasted), %llu copies up (%llu "
          "wasted)\n",
          k, 100 * p["accuracy"].get<double>(),
          static_cast<unsigned long long>(p["reads"].get<uint64_t>()),
          static_cast<unsigned long long>(p["wasted_reads"].get<uint64_t>()),
          static_cast<unsigned long long>(p["copies"].get<uint64_t>()),
          static_cast<unsigned long long>(p["wasted_copies"].get<uint64_t>()));
    }
    if (opts.stream.io.verify)
      std::printf(
          "verify   %llu records checked (crc32c, %s), %.3f ms/token on the reader "
          "threads\n",
          static_cast<unsigned long long>(verified), crc32c_implementation(),
          1e3 * verify_seconds / a->gen_len);
    else
      std::printf("verify   off (--no-verify)\n");
    std::printf("storage  %.2f GB/s over decode, %.2f GB/s while compute waited", wall_gbs,
                wait_gbs);
    if (report.contains("ceilings")) {
      const json& sj = report["storage"];
      std::printf(
          "\nceilings %s %.2f GB/s (while waiting: %.0f%%), expert batches %.2f GB/s (%.0f%%), "
          "memcpy %.1f GB/s",
          sj["ceiling_name"].get<std::string>().c_str(), sj["ceiling_gb_s"].get<double>(),
          100 * sj["ratio_while_waiting_to_ceiling"].get<double>(),
          sj["expert_batch_ceiling_gb_s"].get<double>(),
          100 * sj["ratio_while_waiting_to_expert_batches"].get<double>(),
          report["ceilings"]["memcpy_gb_s"].get<double>());
    }
    std::printf("\n");
    if (!a->json_out.empty()) {
      write_output_file(a->json_out, {report.dump(2) + "\n"}, "--json");
    }
    return 0;
  };
}

const CommandRegistration registration(60, add_bench);

}  // namespace

}  // namespace moeflux::tool
