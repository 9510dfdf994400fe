#include "model/workspace.hpp"

#include <algorithm>

namespace moeflux {

namespace {

constexpr size_t kAlignFloats = 16;  // 64-byte rows and tensors

size_t round_up(size_t n, size_t m) {
  return (n + m - 1) / m * m;
}

bool has_kind(const ModelConfig& c, LayerKind k) {
  return std::find(c.layer_kind.begin(), c.layer_kind.end(), k) != c.layer_kind.end();
}

}  // namespace

Workspace Workspace::create(Backend& be, const ModelConfig& c, size_t max_rows,
                            int active_experts) {
  MF_ASSERT(max_rows > 0 && active_experts > 0);
  Workspace ws;
  ws.max_rows = max_rows;
  const size_t T = max_rows, H = c.hidden_size, K = active_experts;
  ws.max_slots = K + 1;
  const bool attention = has_kind(c, LayerKind::FullAttention);
  const bool linear = has_kind(c, LayerKind::LinearAttention);
  const size_t q_dim = attention ? size_t(c.num_heads) * c.head_dim : 0;
  const size_t kv_dim = attention ? size_t(c.num_kv_heads) * c.head_dim : 0;
  const size_t conv_dim = linear ? c.linear_conv_dim() : 0;
  const size_t vdim = linear ? c.linear_value_dim() : 0;
  const size_t nv = linear ? c.linear_num_value_heads : 0;
  const bool mla = has_kind(c, LayerKind::LatentAttention);
  const size_t nh = c.num_heads, lora = mla ? c.kv_lora_rank : 0, R = mla ? c.qk_rope_head_dim : 0;
  const size_t mla_proj = mla ? size_t(c.q_lora_rank) + lora + R : 0;  // q_a | kv_a
  const size_t P = std::max({q_dim * (c.gated_attention() ? 2 : 1) + 2 * kv_dim,
                             conv_dim + vdim + 2 * nv, size_t(c.num_experts) + 1, mla_proj});
  const size_t M = std::max({q_dim, vdim, mla ? nh * c.v_head_dim : 0});

  // Layout: (tensor, rows, cols) carved in order at 64-byte boundaries.
  struct Part {
    Tensor* t;
    size_t rows, cols;
    DType dtype;
  };
  Tensor ids;
  const Part parts[] = {
      {&ws.h, T, H, DType::F32},
      {&ws.xn, T, H, DType::F32},
      {&ws.proj, T, P, DType::F32},
      {&ws.mix, T, std::max<size_t>(M, 1), DType::F32},
      {&ws.conv, T, std::max<size_t>(conv_dim, 1), DType::F32},
      {&ws.gated, T, std::max<size_t>(vdim, 1), DType::F32},
      {&ws.q_full, T, mla ? nh * c.head_dim : 1, DType::F32},
      {&ws.q_latent, T, mla ? nh * (lora + R) : 1, DType::F32},
      {&ws.o_latent, T, mla ? nh * lora : 1, DType::F32},
      {&ws.slots, T * ws.max_slots, H, DType::F32},
      {&ws.route_weights, 1, T * K, DType::F32},  // dense [T, K]
      {&ids, 1, T * K, DType::I32},
      {&ws.logits, kLogitRows, size_t(c.vocab_size), DType::F32},
  };
  size_t total = 0;
  for (const Part& p : parts) total += p.rows * round_up(p.cols, kAlignFloats);
  ws.buffer = be.allocate(total * sizeof(float), "forward workspace");
  float* base = static_cast<float*>(ws.buffer->data());
  size_t off = 0;
  for (const Part& p : parts) {
    const size_t pitch = round_up(p.cols, kAlignFloats);
    *p.t = Tensor::matrix(base + off, p.rows, p.cols, pitch, be.memory(), p.dtype);
    off += p.rows * pitch;
  }
  // Routing read by the host: per layer, in host memory the backend copies into fastest.
  ws.route_ids_dev = ids.i32();
  ws.route_stride = T * K;
  const size_t layers = static_cast<size_t>(c.num_layers);
  ws.host_buffer = be.allocate_host(2 * layers * T * K * sizeof(float), "routing (host)");
  ws.route_ids_host = static_cast<int32_t*>(ws.host_buffer->data());
  ws.route_weights_host = reinterpret_cast<float*>(ws.route_ids_host + layers * T * K);
  return ws;
}

void MoeScratch::reserve(const ModelConfig& c, size_t max_rows, int active_experts) {
  const size_t E = c.num_experts, TK = max_rows * active_experts;
  count.assign(E, 0);
  first.assign(E + 1, 0);
  in_rows.assign(TK, 0);
  out_rows.assign(TK, 0);
  all_rows.assign(max_rows, 0);
  extra_slots.assign(max_rows, 0);
  wanted.reserve(E);
  tasks.reserve(E + 2);
  ready.reserve(2 * size_t(active_experts) + 2);
}

}  // namespace moeflux
