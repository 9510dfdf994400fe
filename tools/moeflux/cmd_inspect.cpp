#include <cstdio>
#include <map>

#include "commands.hpp"
#include "formats/package.hpp"
#include "model/tensor_specs.hpp"

namespace moeflux::tool {

namespace {

Runner add_inspect(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("inspect", "Describe a moeflux package: shapes, formats, bytes per token");
  auto dir = std::make_shared<std::string>();
  cmd->add_option("PKG", *dir, "Package directory")->required();
  return [dir] {
    PackageOpenOptions po;
    po.verify_resident = false;  // a description only (`moeflux verify` checks)
    const Package pkg = Package::open(*dir, po);
    const ModelConfig& c = pkg.config();
    const ExpertLayout& el = pkg.manifest().experts;
    int full = 0, mla = 0;
    for (auto k : c.layer_kind) {
      full += k == LayerKind::FullAttention;
      mla += k == LayerKind::LatentAttention;
    }
    const int linear = c.num_layers - full - mla;
    const int moe = c.num_moe_layers();
    std::printf("package      %s (format version %d)\n", dir->c_str(), pkg.manifest().version);
    std::printf("family       %s (model_type %s)\n", family_name(c.family), c.model_type.c_str());
    std::printf(
        "layers       %d: %d full attention, %d linear attention (Gated DeltaNet), %d latent "
        "attention (MLA); %d MoE, %d dense\n",
        c.num_layers, full, linear, mla, moe, c.num_layers - moe);
    std::printf(
        "hidden       %d, vocab %d, heads %d (kv %d) x %d, rotary dim %d, rope %s theta %g\n",
        c.hidden_size, c.vocab_size, c.num_heads, c.num_kv_heads, c.head_dim, c.rotary_dim(),
        c.rope.type.c_str(), c.rope.theta);
    if (mla > 0)
      std::printf("MLA          q_lora %d, kv_lora %d, qk nope %d + rope %d, v %d\n", c.q_lora_rank,
                  c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);
    std::printf("KV cache     %s per token (float32; %s)\n",
                human_bytes(double(c.kv_bytes_per_token())).c_str(),
                mla > 0 ? "MLA: latent + rope key per layer" : "K and V per attention layer");
    if (linear > 0)
      std::printf("linear attn  key heads %d x %d, value heads %d x %d, conv kernel %d\n",
                  c.linear_num_key_heads, c.linear_key_head_dim, c.linear_num_value_heads,
                  c.linear_value_head_dim, c.linear_conv_kernel);
    std::printf(
        "experts      %d per layer, top-%d%s, intermediate %d%s\n", c.num_experts, c.top_k,
        c.norm_topk_prob ? " (renormalised)" : "", c.moe_intermediate_size,
        c.shared_expert_intermediate_size
            ? (", shared expert " + std::to_string(c.shared_expert_intermediate_size)).c_str()
            : "");
    if (c.grouped_router())
      std::printf("router       sigmoid + correction bias, %d groups keep %d, scaling %g\n",
                  c.n_group, c.topk_group, c.routed_scaling_factor);
    std::printf("parameters   %s\n", describe_parameters(c).c_str());
    std::map<std::string, std::pair<int, uint64_t>> fmts;
    for (const auto& t : pkg.manifest().resident) {
      auto& f = fmts[format_name(t.fmt)];
      ++f.first;
      f.second += t.bytes;
    }
    std::printf("resident     %s in %zu tensors (",
                human_bytes(double(pkg.resident_bytes())).c_str(), pkg.manifest().resident.size());
    bool first = true;
    for (const auto& [name, f] : fmts) {
      std::printf("%s%s: %d, %s", first ? "" : "; ", name.c_str(), f.first,
                  human_bytes(double(f.second)).c_str());
      first = false;
    }
    std::printf(")\n");
    const double per_layer = double(el.record_bytes) * c.num_experts;
    std::printf("expert fmt   %s\n", format_name(el.fmt).c_str());
    std::printf("per expert   %s (%s payload, records aligned to %zu)\n",
                human_bytes(double(el.record_bytes)).c_str(),
                human_bytes(double(el.payload_bytes())).c_str(), kExpertAlignment);
    std::printf("per layer    %s\n", human_bytes(per_layer).c_str());
    std::printf("all experts  %s in %d layer files\n", human_bytes(per_layer * moe).c_str(), moe);
    std::printf(
        "per token    %s of experts at K=%d (%d MoE layers x %d x %s), if nothing is cached\n",
        human_bytes(double(el.record_bytes) * c.top_k * moe).c_str(), c.top_k, moe, c.top_k,
        human_bytes(double(el.record_bytes)).c_str());
    std::printf("tokenizer    %s\n", pkg.manifest().tokenizer_files.empty() ? "(none)" : "");
    for (const auto& f : pkg.manifest().tokenizer_files)
      std::printf("             %s\n", f.c_str());
    return 0;
  };
}

const CommandRegistration registration(20, add_inspect);

}  // namespace

}  // namespace moeflux::tool
