#include <csignal>
#include <cstdio>

#include "commands.hpp"
#include "convert/synth.hpp"
#include "core/error.hpp"
#include "formats/package_writer.hpp"

namespace moeflux::tool {

namespace {

// SIGINT / SIGTERM: ask the writer to stop; within a fraction of a second it removes its
// partial directory and the command ends with an error. The handler stays installed, so a
// signal repeated to the process group (as `timeout` or a second Ctrl-C sends) does not kill
// the process half way through that clean-up (SIGKILL / SIGQUIT still do).
void on_interrupt(int) {
  PackageWriter::request_cancel();
}

Runner add_synth(CLI::App& app) {
  std::string presets;
  for (const SynthPreset& p : synth_presets())
    presets += "\n  " + p.name + " (" + family_name(p.family) + "): " + p.description;
  auto* cmd = app.add_subcommand(
      "synth", "Write a random-weight package with the published shapes of a model");
  cmd->footer("Presets:" + presets);
  struct Args {
    std::string family, preset, out, experts = "q4", resident;
    int layers = 0;
    uint64_t seed = 1;
    bool force = false, quiet = false, quantize_each = false, dry_run = false;
    size_t threads = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("OUT_DIR", a->out, "Package directory to create")->required();
  cmd->add_option("--family", a->family,
                  "Model family: qwen3_moe, qwen3_5_moe, deepseek_v3 or glm4_moe")
      ->required()
      ->check(CLI::IsMember({"qwen3_moe", "qwen3_5_moe", "deepseek_v3", "glm4_moe"}));
  cmd->add_option("--preset", a->preset, "Model shapes (see Presets below)")->required();
  cmd->add_option("--layers", a->layers, "Keep only the first N layers (default: all)")
      ->check(integer_range(1, 1 << 20));
  cmd->add_option("--experts", a->experts, "Routed-expert format: q4 (default), q8_0 or bf16")
      ->check(CLI::IsMember({"bf16", "q8_0", "q4"}));
  cmd->add_option(
         "--resident", a->resident,
         "Non-expert matrices: bf16 (default, as published), q8_0 or q4 (routers stay bf16)")
      ->check(CLI::IsMember({"bf16", "q8_0", "q4"}));
  cmd->add_option("--seed", a->seed, "Random seed (default 1); same seed, same bytes");
  cmd->add_flag("--quantize-each", a->quantize_each,
                "Quantize every expert from fresh random floats (CPU-bound; default: random "
                "codes over one quantized template per layer, at disk speed)");
  cmd->add_flag("--force", a->force, "Replace OUT_DIR if it exists");
  cmd->add_flag("-q,--quiet", a->quiet, "No progress output");
  cmd->add_flag("--dry-run", a->dry_run,
                "Check the arguments and print the sizes and parameter counts; write nothing");
  cmd->add_option("-t,--threads", a->threads, "Generation threads (default: all hardware threads)")
      ->check(integer_range(1, 4096));
  return [a] {
    SynthOptions o;
    o.family = a->family;
    o.preset = a->preset;
    o.layers = a->layers;
    o.experts = parse_format(a->experts);
    if (!a->resident.empty()) o.resident = parse_format(a->resident);
    o.seed = a->seed;
    o.quantize_each = a->quantize_each;
    o.force = a->force;
    o.progress = !a->quiet;
    o.threads = a->threads;
    o.dry_run = a->dry_run;
    std::signal(SIGINT, on_interrupt);
    std::signal(SIGTERM, on_interrupt);
    const SynthSummary s = synthesize_package(a->out, o);
    if (a->dry_run) {
      std::fprintf(stderr,
                   "[synth] dry run: would write resident %s, experts %s in %d layer files\n",
                   human_bytes(double(s.resident_bytes)).c_str(),
                   human_bytes(double(s.expert_bytes)).c_str(), s.moe_layers);
      return 0;
    }
    if (!a->quiet) {
      const double total = double(s.resident_bytes + s.expert_bytes);
      std::fprintf(stderr,
                   "[synth] wrote %s: resident %s, experts %s in %d layer files, %.1f s "
                   "(%.0f MB/s)\n",
                   a->out.c_str(), human_bytes(double(s.resident_bytes)).c_str(),
                   human_bytes(double(s.expert_bytes)).c_str(), s.moe_layers, s.seconds,
                   total / 1e6 / std::max(s.seconds, 1e-9));
    }
    return 0;
  };
}

const CommandRegistration registration(15, add_synth);

}  // namespace

}  // namespace moeflux::tool
