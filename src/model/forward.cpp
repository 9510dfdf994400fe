#include "model/forward.hpp"

#include <vector>

#include "core/argmax.hpp"
#include "core/error.hpp"
#include "core/finite.hpp"
#include "core/top_k.hpp"
#include "model/family.hpp"
#include "model/layers.hpp"
#include "model/workspace.hpp"

namespace moeflux {

namespace {

// Embedding and every layer of the pass (the ops issued, in order).
void issue_layers(const ForwardContext& ctx, const ModelWeights& w, std::span<const int> tokens,
                  PrefetchMode pf) {
  const ModelConfig& c = ctx.config;
  const size_t T = tokens.size();
  const bool zc = ctx.family.zero_centered_norms;
  {
    ScopedTimer timer(ctx.timings ? &ctx.timings->embed : nullptr);
    ctx.be.embed(w.embed, tokens, ctx.ws.h.rows_view(0, T));
  }
  const bool decode = ctx.seqs.size() == T;  // one row per sequence
  for (int l = 0; l < c.num_layers; ++l) {
    ScopedTimer layer_timer(ctx.timer(l, &LayerTimes::wall));
    const LayerWeights& lw = w.layers[l];
    if (decode && lw.is_moe && !ctx.resident && uses(pf, PrefetchKind::Temporal)) {
      ScopedTimer timer(ctx.timer(l, &LayerTimes::prefetch));
      for (const SequenceChunk& s : ctx.seqs)
        if (!s.state->last_routing[l].experts.empty())
          ctx.streamer.prefetch(l, s.state->last_routing[l].experts, PrefetchKind::Temporal);
    }
    ctx.family.mixer(ctx, lw, l);
    if (decode && !ctx.resident && l + 1 < c.num_layers && w.layers[l + 1].is_moe &&
        uses(pf, PrefetchKind::Lookahead)) {
      ScopedTimer timer(ctx.timer(l, &LayerTimes::prefetch));
      lookahead_prefetch(ctx, w.layers[l + 1], l + 1, zc, /*after_demand=*/lw.is_moe);
    }
    mlp_sublayer(ctx, lw, l, zc, l + 1 < c.num_layers ? w.layers[l + 1].input_norm : nullptr);
  }
}

// What a recorded decode step bakes in besides the weights and the engine's workspace (one per
// engine, as is the backend that keeps recordings): the sequence's state buffers. Equal keys
// mean the same ops on the same buffers; only the token and the position differ.
uint64_t decode_step_key(const ForwardContext& ctx) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the addresses and capacities
  auto mix = [&h](uint64_t v) {
    for (size_t i = 0; i < sizeof(v); ++i, v >>= 8) h = (h ^ (v & 0xff)) * 1099511628211ull;
  };
  auto address = [](const void* p) { return uint64_t(reinterpret_cast<uintptr_t>(p)); };
  mix(address(&ctx.ws));
  mix(address(ctx.resident));
  for (const LayerState& ls : ctx.seqs[0].state->layers)
    for (const Tensor* t : {&ls.kv.k, &ls.kv.v, &ls.delta.conv, &ls.delta.S}) {
      mix(address(t->data));
      mix(t->rank ? t->rows() : 0);  // a cache's capacity (positions)
    }
  return h;
}

// The picks where the logits are (the workspace holds the last kLogitRows rows of them), else
// from the host's copies: the greedy ones in one call, each top-k one alone (rows may ask
// different k).
void pick(const ForwardContext& ctx, std::span<float* const> logits, std::span<LogitsPick> picks) {
  MF_ASSERT(picks.size() == logits.size());
  const size_t n = picks.size(), V = size_t(ctx.config.vocab_size);
  if (n > Workspace::kLogitRows) {
    for (size_t i = 0; i < n; ++i) pick_from_host({logits[i], V}, picks[i]);
    return;
  }
  thread_local std::vector<int32_t> ids;
  thread_local std::vector<uint8_t> finite;
  ids.resize(n);
  finite.resize(n);
  const Tensor rows = ctx.ws.logits.rows_view(0, n);
  bool all_greedy = true;
  for (const LogitsPick& p : picks) all_greedy = all_greedy && p.top_k == 0;
  if (all_greedy) ctx.be.argmax_rows(rows, ids, finite);
  for (size_t i = 0; i < n; ++i) {
    LogitsPick& p = picks[i];
    if (p.top_k > 0) {
      p.best.resize(p.top_k);
      ctx.be.top_k_rows(rows.rows_view(i, 1), p.top_k, p.best, {&finite[i], 1});
    } else if (!all_greedy) {
      ctx.be.argmax_rows(rows.rows_view(i, 1), {&ids[i], 1}, {&finite[i], 1});
    }
    if (p.top_k == 0) p.id = ids[i];
    p.finite = finite[i] != 0;
  }
}

}  // namespace

void pick_from_host(std::span<const float> row, LogitsPick& p) {
  if (p.top_k > 0)
    top_k(row, p.top_k, p.best);
  else
    p.id = static_cast<int>(argmax(row));
  p.finite = all_finite(row);
}

void forward(const ForwardContext& ctx, const ModelWeights& w, std::span<const int> tokens,
             PrefetchMode pf, size_t logits_row, std::span<float* const> logits,
             std::span<LogitsPick> picks) {
  const ModelConfig& c = ctx.config;
  const size_t T = tokens.size();
  MF_ASSERT(T == ctx.rows && T > 0 && T <= ctx.ws.max_rows);
  const bool zc = ctx.family.zero_centered_norms;
  // Every expert resident and routed on the device: nothing in the pass waits for the device,
  // so a single sequence's decode step — embedding, layers, final norm and LM head — is
  // recorded once where the backend records (CUDA graphs) and replayed for the tokens after,
  // the host's cost per token cut to one launch. If something cannot be recorded, nothing
  // recorded has run: the ops are issued again one by one.
  const bool device_routed = ctx.routes_on_device();
  const bool whole = device_routed && T == 1 && logits.size() == 1;
  bool head_issued = false;
  if (whole) {
    const uint64_t key = decode_step_key(ctx);
    const Backend::StepInputs in{tokens[0], ctx.seqs[0].pos0};
    bool replayed = false;
    {
      ScopedTimer timer(ctx.timings ? &ctx.timings->replay : nullptr);
      replayed = ctx.be.replay(key, in);
    }
    if (replayed) {
      head_issued = true;
    } else if (ctx.be.begin_recording(key, in)) {
      try {
        issue_layers(ctx, w, tokens, pf);
        head_rows(ctx, w, zc, logits_row, 1);
        ctx.be.end_recording();
        head_issued = true;
      } catch (const Error& e) {
        ctx.be.abort_recording(e.what());
      } catch (...) {  // not a refusal to record: end the recording, then let it through
        ctx.be.abort_recording("an exception");
        throw;
      }
    }
  }
  if (!head_issued) issue_layers(ctx, w, tokens, pf);
  {
    ScopedTimer timer(ctx.timings ? &ctx.timings->head : nullptr);
    if (head_issued)
      download_logits(ctx, logits);
    else if (!logits.empty())
      final_logits(ctx, w, zc, logits_row, logits);
    ctx.be.synchronize();
    if (!picks.empty()) pick(ctx, logits, picks);
  }
  // Routing decided on the device: recorded now that it has landed.
  if (device_routed)
    for (int l = 0; l < c.num_layers; ++l)
      if (w.layers[l].is_moe) record_routing(ctx, l);
  if (ctx.timings) ctx.timings->tokens += T;
}

}  // namespace moeflux
