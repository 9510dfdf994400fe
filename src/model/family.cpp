#include "model/family.hpp"

#include <algorithm>
#include <string>

#include "core/error.hpp"

namespace moeflux {

const FamilyDef& family_def(Family f) {
  switch (f) {
    case Family::Qwen3Moe:
      return kQwen3MoeFamily;
    case Family::Qwen3_5Moe:
      return kQwen3_5MoeFamily;
    case Family::DeepseekV3:
      return kDeepseekV3Family;
    case Family::Glm4Moe:
      return kGlm4MoeFamily;
  }
  MF_ASSERT(false && "family without a FamilyDef");
  return kQwen3MoeFamily;
}

void check_layer_kinds(const ModelConfig& c, const std::string& source) {
  const FamilyDef& def = family_def(c.family);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerKind k = c.layer_kind[l];
    if (std::find(def.layer_kinds.begin(), def.layer_kinds.end(), k) == def.layer_kinds.end())
      fail(source + ": layer " + std::to_string(l) + " is " +
           (k == LayerKind::FullAttention     ? "full attention"
            : k == LayerKind::LatentAttention ? "latent attention"
                                              : "linear attention") +
           ", which family " + family_name(c.family) + " does not have");
  }
}

}  // namespace moeflux
