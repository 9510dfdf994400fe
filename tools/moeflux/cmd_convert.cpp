#include <cstdio>

#include "commands.hpp"
#include "convert/converter.hpp"
#include "core/error.hpp"

namespace moeflux::tool {

namespace {

Runner add_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert",
                                 "Convert a Hugging Face or MLX checkpoint into a moeflux package");
  struct Args {
    std::string in, out, experts, resident;
    bool force = false, quiet = false;
    size_t threads = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("HF_DIR", a->in, "Checkpoint directory (config.json + safetensors)")->required();
  cmd->add_option("OUT_DIR", a->out, "Package directory to create")->required();
  cmd->add_option("--experts", a->experts,
                  "Routed-expert format: bf16, q8_0 or q4 (default: the checkpoint's)")
      ->check(CLI::IsMember({"bf16", "q8_0", "q4"}));
  cmd->add_option("--resident", a->resident,
                  "Format of the non-expert matrices (attention, shared expert, embedding, LM "
                  "head): bf16, q8_0 "
                  "or q4 (default: the checkpoint's; routers always keep theirs)")
      ->check(CLI::IsMember({"bf16", "q8_0", "q4"}));
  cmd->add_flag("--force", a->force, "Replace OUT_DIR if it exists");
  cmd->add_flag("-q,--quiet", a->quiet, "No progress output");
  cmd->add_option("-t,--threads", a->threads,
                  "Quantization threads (default: all hardware threads)")
      ->check(integer_range(1, 4096));
  return [a] {
    ConvertOptions o;
    if (!a->experts.empty()) o.experts_format = parse_format(a->experts);
    if (!a->resident.empty()) o.resident_format = parse_format(a->resident);
    o.force = a->force;
    o.progress = !a->quiet;
    o.threads = a->threads;
    const ConvertSummary s = convert_checkpoint(a->in, a->out, o);
    if (!a->quiet)
      std::fprintf(stderr,
                   "[convert] wrote %s: resident %s, experts %s in %d layer files, %.1f s\n",
                   a->out.c_str(), human_bytes(double(s.resident_bytes)).c_str(),
                   human_bytes(double(s.expert_bytes)).c_str(), s.moe_layers, s.seconds);
    return 0;
  };
}

const CommandRegistration registration(10, add_convert);

}  // namespace

}  // namespace moeflux::tool
