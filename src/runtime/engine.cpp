#include "runtime/engine.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backend/cpu/cpu_backend.hpp"
#ifdef MOEFLUX_HAVE_CUDA
#include "backend/cuda/cuda_backend.hpp"
#endif
#include "core/error.hpp"
#include "core/human_bytes.hpp"
#include "model/forward.hpp"

namespace moeflux {

namespace {

size_t physical_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

// Floats of one sequence's state for `ctx` positions: K and V per full-attention layer, latent
// and rope key per MLA layer, the conv and recurrent state per linear-attention layer.
size_t sequence_floats(const ModelConfig& c, size_t ctx) {
  size_t n = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    if (c.layer_kind[l] != LayerKind::LinearAttention)
      n += ctx * c.kv_floats_per_token(l);
    else
      n += size_t(c.linear_conv_dim()) * (c.linear_conv_kernel - 1) +
           size_t(c.linear_num_value_heads) * c.linear_key_head_dim * c.linear_value_head_dim;
  }
  return n;
}

std::unique_ptr<Backend> create_backend(const EngineOptions& opts) {
  std::string kind = opts.backend;
#ifdef MOEFLUX_HAVE_CUDA
  if (kind == "auto") kind = cuda::device_available() ? "cuda" : "cpu";
  if (kind == "cuda") return cuda::make_backend({opts.gpu_device});
#else
  if (kind == "auto") kind = "cpu";
  if (kind == "cuda")
    fail(
        "--backend cuda: this build has no CUDA backend (configure with -DMOEFLUX_CUDA=ON "
        "where nvcc exists)");
#endif
  if (kind != "cpu") fail("unknown backend '" + kind + "' (cpu, cuda or auto)");
  return std::make_unique<CpuBackend>(opts.threads);
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
  if (c.grouped_router() && active_experts_ > c.topk_group * (c.num_experts / c.n_group))
    fail("--k " + std::to_string(active_experts_) + " exceeds the " +
         std::to_string(c.topk_group * (c.num_experts / c.n_group)) +
         " experts of the groups the router keeps (topk_group x experts per group)");
  const size_t model_ctx = static_cast<size_t>(c.max_position_embeddings);
  context_ = opts.context > 0 ? opts.context : model_ctx;
  if (context_ > model_ctx)
    fail("--ctx " + std::to_string(context_) + " exceeds the model's " + std::to_string(model_ctx) +
         " positions");
  backend_ = create_backend(opts);
  if (opts_.prefill_chunk == 0)
    opts_.prefill_chunk = backend_->memory() == Memory::Device ? EngineOptions::kPrefillChunkDevice
                                                               : EngineOptions::kPrefillChunkHost;
  if (backend_->memory() == Memory::Host) {
    weights_ = model.weights();
  } else {
    const Package& pkg = model.package();
    const uint8_t* dev = backend_->resident(pkg.resident_base(), pkg.resident_size());
    weights_ = model.weights().rebased(pkg.resident_base(), pkg.resident_size(), dev);
  }
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

  if (backend_->memory() == Memory::Host &&
      (opts.gpu_cache_bytes > 0 || opts.gpu_cache_percent > 0))
    fail("--gpu-mem: the " + std::string(backend_->name()) +
         " backend has no GPU expert cache (use --backend cuda)");
  StreamOptions so = opts.stream;
  so.max_active = active_experts_;
  // A GPU budget for every expert (--gpu-mem all, or a size at least that large): the experts
  // are loaded into backend memory once (load_resident_experts) and the GPU tier keeps only its
  // working slots.
  const size_t all = model.package().manifest().experts.record_bytes *
                     static_cast<size_t>(c.num_experts) * static_cast<size_t>(c.num_layers);
  const bool experts_resident = backend_->memory() == Memory::Device &&
                                opts.gpu_cache_percent == 0 && opts.gpu_cache_bytes >= all;
  if (backend_->memory() == Memory::Device) {
    // The GPU tier computes from device memory: it is the fastest tier; the RAM tier it copies
    // from is page-locked.
    Backend* be = backend_.get();
    TierSpec gpu;
    gpu.name = "gpu";
    gpu.budget_bytes = experts_resident ? 0
                       : opts.gpu_cache_percent > 0
                           ? static_cast<size_t>(static_cast<double>(all) *
                                                 std::min(opts.gpu_cache_percent, 100.0) / 100.0)
                           : std::min(opts.gpu_cache_bytes, all);
    gpu.policy = so.policy;
    gpu.make_memory = [be](size_t slots, size_t bytes) {
      return be->expert_tier_memory(slots, bytes);
    };
    so.upper_tiers.insert(so.upper_tiers.begin(), std::move(gpu));
    so.ram_memory = [be](size_t slots, size_t bytes) { return be->ram_tier_memory(slots, bytes); };
  }
  streamer_ = std::make_unique<ExpertStreamer>(model.package(), so);
  if (opts.gpu_reads == GpuReads::InPlace && backend_->memory() != Memory::Device)
    fail("--gpu-reads in-place: the " + std::string(backend_->name()) +
         " backend reads no host memory across a bus (use --backend cuda)");
  if (opts.gpu_reads == GpuReads::InPlace && !experts_resident && !streamer_->reads_in_place())
    std::fprintf(stderr,
                 "moeflux: --gpu-reads in-place: the GPU cannot read the RAM cache where it lies "
                 "(no unified addressing); copying experts in instead\n");
  if (experts_resident) load_resident_experts();
  if (backend_->memory() == Memory::Device && !experts_resident &&
      opts.cpu_experts != CpuExpertsMode::Off)
    host_experts_ =
        std::make_unique<HostExperts>(std::make_unique<CpuBackend>(opts.threads), opts.cpu_experts,
                                      size_t(c.hidden_size), size_t(active_experts_) + 1);
  if (host_experts_) host_experts_->pin_x(*backend_);
  if (streamer_->reads_in_place() && opts.gpu_reads == GpuReads::Auto) {
    const bool keeps = streamer_->tier(0).keeps_records(), cpu_share = host_experts_ != nullptr;
    if (keeps || cpu_share) host_read_rates_ = backend_->host_read_rates();  // else nothing to gain
    reads_in_place_ = auto_reads_in_place(keeps, cpu_share, host_read_rates_);
  } else {
    reads_in_place_ = streamer_->reads_in_place() && opts.gpu_reads == GpuReads::InPlace;
  }
  // Copies into the GPU tier admitted as reads in place are (StreamOptions::admit_copies):
  // wherever the GPU copies its misses in rather than reading them in place, +6-9% decode at
  // --gpu-mem 25% with and without a CPU share (docs/PERF.md, 2026-12-06); where it reads in
  // place, within noise, so left off. MOEFLUX_ADMIT_COPIES=0 or 1 overrides (to compare).
  if (backend_->memory() == Memory::Device && !experts_resident) {
    bool admit = so.admit_copies || !reads_in_place_;
    if (const char* env = std::getenv("MOEFLUX_ADMIT_COPIES"); env && *env)
      admit = std::strcmp(env, "1") == 0;
    streamer_->set_admit_copies(admit);
  }
  if (opts.timing) timings_.layers.resize(c.num_layers);
}

Engine::~Engine() = default;

bool auto_reads_in_place(bool tier_keeps_records, bool cpu_share, const HostReadRates& rates) {
  return (tier_keeps_records || cpu_share) && rates.copy > 0 &&
         rates.in_place >= kAutoInPlaceMinShare * rates.copy;
}

GpuReads parse_gpu_reads(const std::string& s) {
  if (s == "copy") return GpuReads::Copy;
  if (s == "in-place") return GpuReads::InPlace;
  if (s == "auto") return GpuReads::Auto;
  fail("--gpu-reads: unknown mode '" + s + "' (expected copy, in-place or auto)");
}

const char* gpu_reads_name(GpuReads r) {
  switch (r) {
    case GpuReads::Copy:
      return "copy";
    case GpuReads::InPlace:
      return "in-place";
    case GpuReads::Auto:
      return "auto";
  }
  return "?";
}

void Engine::load_resident_experts() {
  const ModelConfig& c = config();
  const Package& pkg = model_.package();
  const ExpertLayout& el = pkg.manifest().experts;
  const size_t E = static_cast<size_t>(c.num_experts), rb = el.record_bytes;
  MF_ASSERT(rb % sizeof(float) == 0);
  // A loader of its own: records read (and checked) into a RAM tier of working slots, then
  // uploaded; nothing is cached twice.
  StreamOptions lo = opts_.stream;
  lo.upper_tiers.clear();
  lo.ram_cache_bytes = 0;
  lo.hot_per_layer = 0;
  lo.prefetch = PrefetchMode::None;
  lo.ram_memory = nullptr;
  lo.max_active = active_experts_;
  ExpertStreamer loader(pkg, lo);
  auto r = std::make_unique<ResidentExperts>();
  r->layers.resize(c.num_layers);
  r->host_records.resize(c.num_layers);
  auto part = [&](const ExpertPart& p) { return RecordMatrix{el.fmt, p.rows, p.cols, p.offset}; };
  auto upload_bytes = [&](const void* host, size_t bytes, const uint8_t* dev) {
    const size_t n = bytes / sizeof(float);
    backend_->upload(static_cast<const float*>(host), n,
                     Tensor::matrix(const_cast<uint8_t*>(dev), 1, n, n, backend_->memory()));
  };
  std::vector<int> batch;
  std::vector<const uint8_t*> records;
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.layer_is_moe[l]) continue;
    try {
      resident_buffers_.push_back(backend_->allocate(E * rb, "resident experts"));
    } catch (const Error& e) {
      fail(std::string("--gpu-mem all: every expert needs ") +
           human_bytes(double(E * rb) * c.num_moe_layers()) + " of GPU memory (" + e.what() +
           "); give --gpu-mem a size or a share instead");
    }
    const uint8_t* arena = static_cast<const uint8_t*>(resident_buffers_.back()->data());
    std::vector<const uint8_t*>& host = r->host_records[l];
    host.resize(E);
    for (size_t e0 = 0; e0 < E; e0 += active_experts_) {
      batch.clear();
      for (size_t e = e0; e < std::min(E, e0 + active_experts_); ++e) batch.push_back(int(e));
      loader.acquire(l, batch, records);
      for (size_t i = 0; i < batch.size(); ++i) {
        host[batch[i]] = arena + batch[i] * rb;
        upload_bytes(records[i], rb, host[batch[i]]);
      }
      loader.release();
    }
    resident_buffers_.push_back(backend_->allocate(E * sizeof(void*), "resident expert table"));
    const auto* table = static_cast<const uint8_t*>(resident_buffers_.back()->data());
    upload_bytes(host.data(), E * sizeof(void*), table);
    IndexedExperts& ix = r->layers[l];
    ix.records = reinterpret_cast<const uint8_t* const*>(table);
    ix.experts = E;
    ix.gate = part(el.gate);
    ix.up = part(el.up);
    ix.down = part(el.down);
    // Records start at arena + e * rb, the arena aligned to 256 bytes.
    ix.record_alignment = std::min<size_t>(256, rb & (~rb + 1));
    r->bytes += E * rb;
  }
  r->max_indexed_rows = 8;
  const size_t K = static_cast<size_t>(active_experts_);
  // Every batch routes on the device: between max_indexed_rows and kGroupedPairsPerExpert pairs
  // per expert (9-31 rows for Qwen3-30B) with one matrix-vector product per pair, which beat the
  // host's grouping after a routing wait by 15-22% (bench-batch, H200, 2026-12-05).
  // MOEFLUX_DEVICE_ROUTING=host keeps that range on the host (to compare).
  r->min_grouped_rows = r->max_indexed_rows + 1;
  if (const char* v = std::getenv("MOEFLUX_DEVICE_ROUTING"); v && std::string(v) == "host")
    r->min_grouped_rows = (kGroupedPairsPerExpert * E + K - 1) / K;
  resident_ = std::move(r);
}

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
    if (c.layer_kind[l] == LayerKind::LatentAttention) {
      // One row per position: [latent (L) | rope key (R)]; the values are its latent columns.
      const size_t w = c.kv_floats_per_token(l);
      ls.kv.k = Tensor::matrix(p, ctx, w, w, mem);
      ls.kv.v = ls.kv.k.cols_view(0, size_t(c.kv_lora_rank));
      p += ctx * w;
    } else if (c.layer_kind[l] == LayerKind::FullAttention) {
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
  timings_.embed = timings_.head = timings_.replay = 0;
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
                     size_t logits_row, std::span<float* const> logits,
                     std::span<LogitsPick> picks) {
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
                           opts_.on_routing ? &opts_.on_routing : nullptr,
                           resident_.get(),
                           host_experts_.get(),
                           reads_in_place_};
  moeflux::forward(ctx, weights_, tokens, opts_.stream.prefetch, logits_row, logits, picks);
}

}  // namespace moeflux
