// The model families: each supplies, as data, what differs between families — its token mixer
// per layer kind, its router, its norm convention and the layer kinds it can have. The session
// and the shared layer blocks (layers.hpp) never switch on the family; adding a family adds
// its own file (a FamilyDef) and the backend ops it needs, and one line in family.cpp.
#pragma once

#include <span>

#include "backend/backend.hpp"
#include "model/forward_context.hpp"
#include "model/weights.hpp"

namespace moeflux {

struct FamilyDef {
  Family family;
  // h <- h + mixer(norm_in(h)) for all rows of the batch (the layer's kind picks the mixer).
  void (*mixer)(const ForwardContext& ctx, const LayerWeights& w, int layer);
  // The router of a MoE layer, for `active` experts per token.
  RouterSpec (*router)(const ModelConfig& c, int active);
  // Decoder norms (input, post-attention, q/k, final): x·(1 + w) instead of x·w.
  bool zero_centered_norms;
  std::span<const LayerKind> layer_kinds;  // kinds this family's layers may have
};

// The definition of `f`. Every Family has one.
const FamilyDef& family_def(Family f);

// Throws moeflux::Error (naming `source`) if a layer of `c` has a kind its family lacks.
void check_layer_kinds(const ModelConfig& c, const std::string& source);

extern const FamilyDef kQwen3MoeFamily;
extern const FamilyDef kQwen3_5MoeFamily;
extern const FamilyDef kDeepseekV3Family;
extern const FamilyDef kGlm4MoeFamily;

// The sigmoid group-limited router (`noaux_tc`) of deepseek_v3 and glm4_moe (deepseek_v3.cpp).
RouterSpec grouped_router(const ModelConfig& c, int active);

}  // namespace moeflux
