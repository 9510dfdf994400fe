#include "runtime/session.hpp"

#include "backend/cpu/matvec.hpp"
#include "backend/cpu/ops.hpp"
#include "core/error.hpp"

namespace moeflux {

Model::Model(Package pkg)
    : pkg_(std::move(pkg)), weights_(ModelWeights::bind(pkg_)), rope_(pkg_.config()) {}

std::unique_ptr<Model> Model::open(const std::string& dir) {
  return std::unique_ptr<Model>(new Model(Package::open(dir)));
}

Session::Session(const Model& model, const EngineOptions& opts)
    : model_(model),
      pool_(opts.threads),
      experts_(make_pread_expert_source(model.package(), opts.io_threads)) {
  const ModelConfig& c = model.config();
  active_experts_ = opts.active_experts > 0 ? opts.active_experts : c.top_k;
  if (active_experts_ > c.num_experts)
    fail("--k " + std::to_string(active_experts_) + " exceeds the model's " +
         std::to_string(c.num_experts) + " experts");
  for (int i = 0; i < active_experts_; ++i)
    expert_bufs_.emplace_back(model.package().manifest().experts.record_bytes, kExpertAlignment);
  clear();
}

void Session::clear() {
  const ModelConfig& c = model_.config();
  states_.assign(c.num_layers, LayerState{});
  for (int l = 0; l < c.num_layers; ++l)
    if (c.layer_kind[l] == LayerKind::LinearAttention) states_[l].delta = make_deltanet_state(c);
  routing_.assign(c.num_layers, RoutingRecord{});
  pos_ = 0;
}

const std::vector<float>& Session::eval_token(int token) {
  const ModelConfig& c = model_.config();
  const ModelWeights& w = model_.weights();
  if (token < 0 || token >= c.vocab_size)
    fail("token id " + std::to_string(token) + " is out of range (vocabulary size " +
         std::to_string(c.vocab_size) + ")");
  if (pos_ >= c.max_position_embeddings)
    fail("context is full (" + std::to_string(c.max_position_embeddings) + " positions)");

  const size_t H = c.hidden_size;
  hidden_.resize(H);
  cpu::dequantize_row(w.embed, static_cast<size_t>(token), hidden_.data());

  ForwardContext ctx{c,      model_.package().manifest().experts, model_.rope(), pool_, *experts_,
                     active_experts_, expert_bufs_};
  for (int l = 0; l < c.num_layers; ++l) {
    RoutingRecord* r = c.layer_is_moe[l] ? &routing_[l] : nullptr;
    switch (c.family) {
      case Family::Qwen3Moe:
        qwen3_moe_layer(ctx, w.layers[l], l, states_[l], hidden_.data(), pos_, r);
        break;
      case Family::Qwen3_5Moe:
        qwen3_5_moe_layer(ctx, w.layers[l], l, states_[l], hidden_.data(), pos_, r);
        break;
    }
  }
  normed_.resize(H);
  cpu::rmsnorm(hidden_.data(), w.final_norm, normed_.data(), H,
               static_cast<float>(c.rms_norm_eps), c.zero_centered_norms());
  logits_.resize(c.vocab_size);
  cpu::matvec(w.lm_head, normed_.data(), logits_.data(), pool_);
  ++pos_;
  return logits_;
}

}  // namespace moeflux
