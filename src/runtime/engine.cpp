#include "runtime/engine.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/cpu_backend.hpp"
#include "core/error.hpp"
#include "core/human_bytes.hpp"
#include "model/forward.hpp"

namespace moeflux {

namespace {

size_t physical_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

// Bytes of one sequence's state for `ctx` positions: K and V per full-attention layer, the conv
// and recurrent state per linear-attention layer (float32).
size_t sequence_floats(const ModelConfig& c, size_t ctx) {
  size_t n = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    if (c.layer_kind[l] == LayerKind::FullAttention)
      n += 2 * ctx * size_t(c.num_kv_heads) * c.head_dim;
    else
      n += size_t(c.linear_conv_dim()) * (c.linear_conv_kernel - 1) +
           size_t(c.linear_num_value_heads) * c.linear_key_head_dim * c.linear_value_head_dim;
  }
  return n;
}

}  // namespace

Model::Model(Package pkg) : pkg_(std::move(pkg)), weights_(ModelWeights::bind(pkg_)) {
  check_layer_kinds(pkg_.config(), pkg_.dir());
}

std::unique_ptr<Model> Model::open(const std::string& dir, const PackageOpenOptions& opts) {
  return std::unique_ptr<Model>(new Model(Package::open(dir, opts)));
}

Engine::Engine(const Model& model, const EngineOptions& opts) : model_(model), opts_(opts) {
  const ModelConfig& c = model.config();
  active_experts_ = opts.active_experts > 0 ? opts.active_experts : c.top_k;
  if (active_experts_ > c.num_experts)
    fail("--k " + std::to_string(active_experts_) + " exceeds the model's " +
         std::to_string(c.num_experts) + " experts");
  const size_t model_ctx = static_cast<size_t>(c.max_position_embeddings);
  context_ = opts.context > 0 ? opts.context : model_ctx;
  if (context_ > model_ctx)
    fail("--ctx " + std::to_string(context_) + " exceeds the model's " + std::to_string(model_ctx) +
         " positions");
  if (opts_.prefill_chunk == 0) opts_.prefill_chunk = 1;

  backend_ = std::make_unique<CpuBackend>(opts.threads);
  ws_ = Workspace::create(*backend_, c, opts_.prefill_chunk, active_experts_);
  moe_.reserve(c, opts_.prefill_chunk, active_experts_);

  // cos/sin of p * inv_freq[i] (times the attention factor) for p < context (rope.hpp).
  const Rope rope(c);
  const size_t half = static_cast<size_t>(std::max(rope.rotary_dim() / 2, 1));
  rope_buffer_ = backend_->allocate(2 * context_ * half * sizeof(float), "rope table");
  float* base = static_cast<float*>(rope_buffer_->data());
  rope_.rotary_dim = rope.rotary_dim();
  rope_.cos = Tensor::matrix(base, context_, half, half, backend_->memory());
  rope_.sin = Tensor::matrix(base + context_ * half, context_, half, half, backend_->memory());
  {
    std::vector<float> cs(context_ * half), sn(context_ * half);
    rope.fill_table(context_, cs.data(), sn.data());
    backend_->upload(cs.data(), half, rope_.cos);
    backend_->upload(sn.data(), half, rope_.sin);
  }

  StreamOptions so = opts.stream;
  so.max_active = active_experts_;
  streamer_ = std::make_unique<ExpertStreamer>(model.package(), so);
  if (opts.timing) timings_.layers.resize(c.num_layers);
}

Engine::~Engine() = default;

SequenceState Engine::new_sequence(size_t ctx, std::unique_ptr<BackendBuffer>* buffer) {
  const ModelConfig& c = config();
  if (ctx == 0) ctx = context_;
  if (ctx > context_)
    fail("--ctx " + std::to_string(ctx) + " exceeds the engine's " + std::to_string(context_) +
         " positions");
  const size_t bytes = sequence_floats(c, ctx) * sizeof(float);
  const size_t ram = physical_memory();
  if (ram > 0 && bytes > ram)
    fail("a context of " + std::to_string(ctx) + " positions needs " + human_bytes(bytes) +
         " of KV cache and state, more than this machine's " + human_bytes(ram) +
         " of memory: pass a smaller --ctx");
  *buffer = backend_->allocate(bytes, "sequence state (KV cache)");
  float* p = static_cast<float*>((*buffer)->data());
  const Memory mem = backend_->memory();
  SequenceState s;
  s.layers.resize(c.num_layers);
  s.last_routing.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerState& ls = s.layers[l];
    if (c.layer_kind[l] == LayerKind::FullAttention) {
      const size_t kv = size_t(c.num_kv_heads) * c.head_dim;
      ls.kv.k = Tensor::matrix(p, ctx, kv, kv, mem);
      ls.kv.v = Tensor::matrix(p + ctx * kv, ctx, kv, kv, mem);
      p += 2 * ctx * kv;
    } else {
      const size_t C = c.linear_conv_dim(), km1 = c.linear_conv_kernel - 1;
      const size_t nv = c.linear_num_value_heads,
                   kd = size_t(c.linear_key_head_dim) * c.linear_value_head_dim;
      ls.delta.conv = Tensor::matrix(p, C, km1, km1, mem);
      ls.delta.S = Tensor::matrix(p + C * km1, nv, kd, kd, mem);
      p += C * km1 + nv * kd;
    }
    if (c.layer_is_moe[l]) {
      s.last_routing[l].experts.reserve(active_experts_);
      s.last_routing[l].weights.reserve(active_experts_);
    }
  }
  reset_sequence(s);
  return s;
}

void Engine::reset_sequence(SequenceState& s) {
  std::lock_guard<std::mutex> lock(mu_);
  for (LayerState& ls : s.layers) {
    if (ls.delta.conv.rank) backend_->fill(ls.delta.conv, 0.0f);
    if (ls.delta.S.rank) backend_->fill(ls.delta.S, 0.0f);
  }
  for (RoutingRecord& r : s.last_routing) {
    r.experts.clear();
    r.weights.clear();
  }
}

void Engine::reset_timings() {
  std::lock_guard<std::mutex> lock(mu_);
  for (LayerTimes& l : timings_.layers) l = LayerTimes{};
  timings_.embed = timings_.head = 0;
  timings_.tokens = 0;
}

void Engine::cancel_prefetches() {
  std::lock_guard<std::mutex> lock(mu_);
  streamer_->cancel_deferred_prefetches();
}

void Engine::download(const Tensor& t, float* host, size_t rows) {
  if (rows == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  backend_->download(t.rows_view(0, rows), host, t.cols());
  backend_->synchronize();
}

void Engine::upload(const float* host, const Tensor& t, size_t rows) {
  if (rows == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  backend_->upload(host, t.cols(), t.rows_view(0, rows));
  backend_->synchronize();
}

void Engine::forward(std::span<const int> tokens, std::span<const SequenceChunk> seqs,
                     size_t logits_row, std::span<float* const> logits) {
  std::lock_guard<std::mutex> lock(mu_);
  const ForwardContext ctx{config(),
                           family_def(config().family),
                           model_.package().manifest().experts,
                           *backend_,
                           ws_,
                           moe_,
                           *streamer_,
                           rope_,
                           active_experts_,
                           tokens.size(),
                           seqs,
                           opts_.timing ? &timings_ : nullptr,
                           opts_.on_routing ? &opts_.on_routing : nullptr};
  moeflux::forward(ctx, model_.weights(), tokens, opts_.stream.prefetch, logits_row, logits);
}

}  // namespace moeflux
