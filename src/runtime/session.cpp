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
    : model_(model), opts_(opts), pool_(opts.threads) {
  const ModelConfig& c = model.config();
  active_experts_ = opts.active_experts > 0 ? opts.active_experts : c.top_k;
  if (active_experts_ > c.num_experts)
    fail("--k " + std::to_string(active_experts_) + " exceeds the model's " +
         std::to_string(c.num_experts) + " experts");
  if (opts_.prefill_chunk == 0) opts_.prefill_chunk = 1;
  StreamOptions so = opts.stream;
  so.max_active = active_experts_;
  streamer_ = std::make_unique<ExpertStreamer>(model.package(), so);
  if (opts.timing) timings_.layers.resize(c.num_layers);
  clear();
}

void Session::clear() {
  const ModelConfig& c = model_.config();
  states_.assign(c.num_layers, LayerState{});
  for (int l = 0; l < c.num_layers; ++l)
    if (c.layer_kind[l] == LayerKind::LinearAttention) states_[l].delta = make_deltanet_state(c);
  routing_.assign(c.num_layers, RoutingRecord{});
  streamer_->cancel_deferred_prefetches();
  pos_ = 0;
}

void Session::check_tokens(std::span<const int> tokens) const {
  const ModelConfig& c = model_.config();
  for (int token : tokens)
    if (token < 0 || token >= c.vocab_size)
      fail("token id " + std::to_string(token) + " is out of range (vocabulary size " +
           std::to_string(c.vocab_size) + ")");
  if (static_cast<size_t>(pos_) + tokens.size() > static_cast<size_t>(c.max_position_embeddings))
    fail("context is full: " + std::to_string(pos_) + " + " + std::to_string(tokens.size()) +
         " tokens exceed the model's " + std::to_string(c.max_position_embeddings) + " positions");
}

const std::vector<float>& Session::eval_token(int token) {
  const int t[1] = {token};
  return eval_prompt(t);
}

const std::vector<float>& Session::eval_prompt(std::span<const int> tokens,
                                               std::vector<float>* all_logits) {
  check_tokens(tokens);
  if (all_logits) all_logits->clear();
  for (size_t b = 0; b < tokens.size(); b += opts_.prefill_chunk)
    eval_chunk(tokens.subspan(b, std::min(opts_.prefill_chunk, tokens.size() - b)), all_logits);
  return logits_;
}

void Session::eval_chunk(std::span<const int> tokens, std::vector<float>* all_logits) {
  const ModelConfig& c = model_.config();
  const ModelWeights& w = model_.weights();
  const size_t H = c.hidden_size, T = tokens.size();
  ForwardTimings* timings = opts_.timing ? &timings_ : nullptr;
  ForwardContext ctx{c,
                     model_.package().manifest().experts,
                     model_.rope(),
                     pool_,
                     *streamer_,
                     active_experts_,
                     timings};
  const PrefetchMode pf = opts_.stream.prefetch;
  const bool decode = T == 1;  // prefetch predicts the next token's experts: decode only

  hidden_.resize(T * H);
  {
    ScopedTimer timer(timings ? &timings->embed : nullptr);
    for (size_t t = 0; t < T; ++t)
      cpu::dequantize_row(w.embed, static_cast<size_t>(tokens[t]), &hidden_[t * H]);
  }
  std::vector<RoutingRecord> routes;
  std::vector<float> x(H);
  for (int l = 0; l < c.num_layers; ++l) {
    ScopedTimer layer_timer(ctx.timer(l, &LayerTimes::wall));
    const LayerWeights& lw = w.layers[l];
    // Temporal prefetch: the previous token's experts of this layer, read while the mixer runs.
    if (decode && lw.is_moe && uses(pf, PrefetchKind::Temporal) && !routing_[l].experts.empty()) {
      ScopedTimer timer(ctx.timer(l, &LayerTimes::prefetch));
      streamer_->prefetch(l, routing_[l].experts, PrefetchKind::Temporal);
    }
    for (size_t t = 0; t < T; ++t) {
      float* h = &hidden_[t * H];
      const int pos = pos_ + static_cast<int>(t);
      switch (c.family) {
        case Family::Qwen3Moe:
          qwen3_moe_mixer(ctx, lw, l, states_[l], h, pos);
          break;
        case Family::Qwen3_5Moe:
          qwen3_5_moe_mixer(ctx, lw, l, states_[l], h, pos);
          break;
      }
    }
    // Look-ahead prefetch: layer l+1's router on this layer's post-attention state, issued
    // right after this layer's own expert reads (before them, the guesses would delay them).
    if (decode && l + 1 < c.num_layers && w.layers[l + 1].is_moe &&
        uses(pf, PrefetchKind::Lookahead)) {
      ScopedTimer timer(ctx.timer(l, &LayerTimes::prefetch));
      cpu::rmsnorm(hidden_.data(), w.layers[l + 1].post_norm, x.data(), H,
                   static_cast<float>(c.rms_norm_eps), c.zero_centered_norms());
      const std::vector<int> guess = route_only(ctx, w.layers[l + 1].moe, x.data());
      if (lw.is_moe)
        streamer_->prefetch_after_next_demand(l + 1, guess, PrefetchKind::Lookahead);
      else
        streamer_->prefetch(l + 1, guess, PrefetchKind::Lookahead);
    }
    mlp_sublayer(ctx, lw, l, hidden_.data(), T, lw.is_moe ? &routes : nullptr);
    if (lw.is_moe) {
      routing_[l] = routes.back();
      if (opts_.on_routing) opts_.on_routing(l, pos_, routes);
    }
  }

  ScopedTimer timer(timings ? &timings->head : nullptr);
  logits_.resize(c.vocab_size);
  const size_t first = all_logits ? 0 : T - 1;
  for (size_t t = first; t < T; ++t) {
    cpu::rmsnorm(&hidden_[t * H], w.final_norm, x.data(), H, static_cast<float>(c.rms_norm_eps),
                 c.zero_centered_norms());
    cpu::matvec(w.lm_head, x.data(), logits_.data(), pool_);
    if (all_logits) all_logits->insert(all_logits->end(), logits_.begin(), logits_.end());
  }
  if (timings) timings->tokens += T;
  pos_ += static_cast<int>(T);
}

}  // namespace moeflux
