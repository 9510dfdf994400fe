// Dispatch, the float64 reference, row decoding and matmul for the CPU weight kernels.
// The SIMD row kernels live in matvec_avx2.cpp / matvec_avx512.cpp.
#include "backend/cpu/matvec.hpp"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/matvec_kernels.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"

namespace moeflux::cpu {

static_assert(std::endian::native == std::endian::little,
              "stored formats are little-endian; a big-endian host needs byte swaps here");

namespace {

constexpr size_t kMatvecRowGrain = 16;   // rows per parallel_for unit in matvec
constexpr size_t kMatmulRowBlock = 16;   // rows decoded to float at once in matmul
constexpr size_t kMatmulColChunk = 512;  // columns per pass over the tokens in matmul
constexpr size_t kMatmulMinTokens = 16;  // below this, matmul runs the matvec kernel per token
constexpr size_t kMatvecBlockRows = 64;  // rows per block in that case

// The view's invariants (matvec.hpp "Common preconditions").
void check_view(const MatrixView& W) {
  MF_ASSERT(format_accepts_cols(W.fmt, W.cols));
  if (W.rows == 0) return;
  MF_ASSERT(W.data != nullptr);
  if (W.fmt.kind == QuantKind::Q8_0) {
    MF_ASSERT(W.fmt.group == 32);
    MF_ASSERT(W.scales != nullptr);
  }
  if (W.fmt.kind == QuantKind::Affine) {
    MF_ASSERT(W.fmt.group == 32 || W.fmt.group == 64 || W.fmt.group == 128);
    MF_ASSERT(W.scales != nullptr && W.biases != nullptr);
  }
}

// dequantize_row without the checks (callers have done them).
void decode_row(const MatrixView& W, size_t r, float* out) {
  const size_t n = W.cols;
  const uint8_t* row = W.data + r * row_data_bytes(W.fmt, n);
  switch (W.fmt.kind) {
    case QuantKind::F32:
      std::memcpy(out, row, n * sizeof(float));
      return;
    case QuantKind::F16:
      for (size_t c = 0; c < n; ++c) out[c] = f16_to_f32(detail::load_u16(row + 2 * c));
      return;
    case QuantKind::BF16:
      for (size_t c = 0; c < n; ++c) out[c] = bf16_to_f32(detail::load_u16(row + 2 * c));
      return;
    case QuantKind::Q8_0: {
      // out[c] = q[c] * d[c / 32]
      const uint8_t* sc = W.scales + r * row_scale_bytes(W.fmt, n);
      for (size_t g = 0; g < n / 32; ++g) {
        const float d = f16_to_f32(detail::load_u16(sc + 2 * g));
        for (size_t j = 0; j < 32; ++j) {
          out[g * 32 + j] = static_cast<float>(static_cast<int8_t>(row[g * 32 + j])) * d;
        }
      }
      return;
    }
    case QuantKind::Affine: {
      // out[c] = q[c] * s[g] + b[g], g = c / group. The words are little-endian, so byte k of
      // the row holds elements 2k (low nibble) and 2k+1 (high nibble) for 4 bits, element k for
      // 8 bits; groups are whole bytes.
      const size_t group = static_cast<size_t>(W.fmt.group);
      const uint8_t* sc = W.scales + r * row_scale_bytes(W.fmt, n);
      const uint8_t* bi = W.biases + r * row_bias_bytes(W.fmt, n);
      for (size_t g = 0; g < n / group; ++g) {
        const float s = bf16_to_f32(detail::load_u16(sc + 2 * g));
        const float b = bf16_to_f32(detail::load_u16(bi + 2 * g));
        float* o = out + g * group;
        if (W.fmt.bits == 4) {
          const uint8_t* q = row + g * group / 2;
          for (size_t k = 0; k < group / 2; ++k) {
            o[2 * k] = static_cast<float>(q[k] & 0xf) * s + b;
            o[2 * k + 1] = static_cast<float>(q[k] >> 4) * s + b;
          }
        } else {
          const uint8_t* q = row + g * group;
          for (size_t k = 0; k < group; ++k) o[k] = static_cast<float>(q[k]) * s + b;
        }
      }
      return;
    }
  }
}

void rows_on(Isa isa, const MatrixView& W, const float* x, float* y, size_t row_begin,
             size_t row_end) {
  switch (isa) {
#if defined(__x86_64__)
    case Isa::Avx512:
      detail::matvec_rows_avx512(W, x, y, row_begin, row_end);
      return;
    case Isa::Avx2:
      detail::matvec_rows_avx2(W, x, y, row_begin, row_end);
      return;
#endif
    default:
      matvec_scalar_rows(W, x, y, row_begin, row_end);
      return;
  }
}

// Tiles of at most the ISA's tile_tokens tokens (4 on AVX-512, else 2).
void dot_tile_on(Isa isa, const detail::Tile& tile) {
  switch (isa) {
#if defined(__x86_64__)
    case Isa::Avx512:
      detail::dot_tile4_avx512(tile);
      return;
    case Isa::Avx2:
      detail::dot_tile_avx2(tile);
      return;
#endif
    default:
      detail::dot_tile_scalar(tile);
      return;
  }
}

Isa isa_from_env(Isa best) {
  const char* env = std::getenv("MOEFLUX_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  Isa forced;
  if (want == "scalar") {
    forced = Isa::Scalar;
  } else if (want == "avx2") {
    forced = Isa::Avx2;
  } else if (want == "avx512") {
    forced = Isa::Avx512;
  } else {
    std::fprintf(stderr, "moeflux: ignoring MOEFLUX_ISA='%s' (expected scalar, avx2 or avx512)\n",
                 env);
    return best;
  }
  if (forced > best) {
    std::fprintf(stderr, "moeflux: MOEFLUX_ISA=%s not supported by this CPU; using %s\n", env,
                 isa_name(best));
    return best;
  }
  return forced;
}

}  // namespace

namespace detail {

void prepare_affine_rows(const float* x, size_t n, size_t group, size_t perm_block, float* xp,
                         float* xsum) {
  for (size_t g = 0; g < n / group; ++g) {
    float s = 0.0f;
    for (size_t c = g * group; c < (g + 1) * group; ++c) s += x[c];
    xsum[g] = s;
  }
  if (perm_block == 0) return;
  const size_t half = perm_block / 2;
  for (size_t b = 0; b < n; b += perm_block) {
    for (size_t i = 0; i < half; ++i) {
      xp[b + i] = x[b + 2 * i];
      xp[b + half + i] = x[b + 2 * i + 1];
    }
  }
}

void prepare_affine_x(const float* x, size_t n, size_t group, size_t perm_block, AffineX& out) {
  out.xsum.resize(n / group);
  if (perm_block) out.xp.resize(n);
  prepare_affine_rows(x, n, group, perm_block, out.xp.data(), out.xsum.data());
}

void dot_tile_scalar(const Tile& tile) {
  for (size_t t = 0; t < tile.ntok; ++t) {
    for (size_t i = 0; i < tile.nrows; ++i) {
      double acc = 0.0;
      for (size_t c = 0; c < tile.n; ++c) {
        acc += static_cast<double>(tile.w[i * tile.ldw + c]) * tile.x[t * tile.ldx + c];
      }
      float& o = tile.out[t * tile.ldo + i];
      o = tile.accumulate ? o + static_cast<float>(acc) : static_cast<float>(acc);
    }
  }
}

}  // namespace detail

Isa cpu_isa() {
#if defined(__x86_64__)
  static const Isa isa = [] {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    return avx512 ? Isa::Avx512 : avx2 ? Isa::Avx2 : Isa::Scalar;
  }();
  return isa;
#else
  return Isa::Scalar;
#endif
}

Isa active_isa() {
  static const Isa isa = isa_from_env(cpu_isa());
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    case Isa::Scalar:
      return "scalar";
  }
  return "?";
}

const char* matvec_isa() {
  return isa_name(active_isa());
}

void dequantize_row(const MatrixView& W, size_t r, float* out) {
  check_view(W);
  MF_ASSERT(r < W.rows && out != nullptr);
  decode_row(W, r, out);
}

void matvec_scalar_rows(const MatrixView& W, const float* x, float* y, size_t row_begin,
                        size_t row_end) {
  check_view(W);
  MF_ASSERT(row_begin <= row_end && row_end <= W.rows);
  if (row_begin == row_end) return;
  MF_ASSERT(x != nullptr && y != nullptr);
  std::vector<float> w(W.cols);
  for (size_t r = row_begin; r < row_end; ++r) {
    decode_row(W, r, w.data());
    double acc = 0.0;
    for (size_t c = 0; c < W.cols; ++c) acc += static_cast<double>(w[c]) * x[c];
    y[r] = static_cast<float>(acc);
  }
}

void matvec_rows_isa(Isa isa, const MatrixView& W, const float* x, float* y, size_t row_begin,
                     size_t row_end) {
  matmul_rows_isa(isa, W, x, W.cols, 1, y, W.rows, row_begin, row_end);
}

void matvec_rows(const MatrixView& W, const float* x, float* y, size_t row_begin, size_t row_end) {
  matvec_rows_isa(active_isa(), W, x, y, row_begin, row_end);
}

namespace {

// Rows per task so that each task does at least ~32K multiply-adds (rows x cols x tokens):
// below that, handing work to another thread costs more than doing it. A multiple of 16.
size_t min_task_rows(size_t cols, size_t n_tokens) {
  constexpr size_t kMinMacsPerTask = size_t{1} << 15;
  const size_t rows = kMinMacsPerTask / std::max<size_t>(1, cols * n_tokens);
  return (rows + 15) / 16 * 16;
}

}  // namespace

void matvec(const MatrixView& W, const float* x, float* y, ThreadPool& pool) {
  check_view(W);
  if (W.rows == 0) return;
  MF_ASSERT(x != nullptr && y != nullptr);
  thread_local PreparedX prepared;
  PreparedX& px = prepared;  // the workers reach the caller's through this reference
  prepare_begin(W.fmt, x, W.cols, 1, W.cols, px);
  prepare_rows(px, 0, 1);
  pool.parallel_for(
      W.rows, [&](size_t b, size_t e) { matmul_rows_prepared(W, px, y, W.rows, b, e); },
      std::max(kMatvecRowGrain, min_task_rows(W.cols, 1)));
}

namespace {

// Decodes kMatmulRowBlock rows to float once (block[i, :] = W[r0 + i, :]; with simd_decode in
// the order of the ISA's prepared x, decode_rows_*), then Y[t, r0 + i] = Σ_chunks block[i, chunk]
// · X[t, chunk] in register tiles of 4 rows x 2 tokens (4 x 4 on AVX-512); a chunk of
// kMatmulColChunk columns of 4 rows stays in L1 across all tokens.
void tile_rows(Isa isa, const MatrixView& W, bool simd_decode, const float* X, size_t ldx,
               size_t n_tokens, float* Y, size_t ldy, size_t row_begin, size_t row_end) {
  const size_t cols = W.cols;
  const size_t tile_tokens = isa == Isa::Avx512 ? detail::kTileTokens4 : detail::kTileTokens;
  thread_local std::vector<float> block;  // grows to the widest matrix once per thread
  if (block.size() < kMatmulRowBlock * cols) block.resize(kMatmulRowBlock * cols);
  for (size_t r0 = row_begin; r0 < row_end; r0 += kMatmulRowBlock) {
    const size_t nr = std::min(kMatmulRowBlock, row_end - r0);
#if defined(__x86_64__)
    if (simd_decode && isa == Isa::Avx512)
      detail::decode_rows_avx512(W, r0, nr, block.data(), cols);
    else if (simd_decode)
      detail::decode_rows_avx2(W, r0, nr, block.data(), cols);
    else
#endif
      for (size_t i = 0; i < nr; ++i) decode_row(W, r0 + i, block.data() + i * cols);
    // Tokens outer, rows inner: a tile's x chunk is reused by all the block's row tiles while
    // in L1, and the block's chunk (16 rows x 512 columns) stays in L1/L2 across the tokens.
    for (size_t k0 = 0; k0 < cols; k0 += kMatmulColChunk) {
      for (size_t t = 0; t < n_tokens; t += tile_tokens) {
        for (size_t i = 0; i < nr; i += detail::kTileRows) {
          const detail::Tile tile{.w = block.data() + i * cols + k0,
                                  .ldw = cols,
                                  .nrows = std::min(detail::kTileRows, nr - i),
                                  .x = X + t * ldx + k0,
                                  .ldx = ldx,
                                  .ntok = std::min(tile_tokens, n_tokens - t),
                                  .n = std::min(kMatmulColChunk, cols - k0),
                                  .out = Y + t * ldy + r0 + i,
                                  .ldo = ldy,
                                  .accumulate = k0 > 0};
          dot_tile_on(isa, tile);
        }
      }
    }
  }
}

}  // namespace

void matmul_rows_isa(Isa isa, const MatrixView& W, const float* X, size_t ldx, size_t n_tokens,
                     float* Y, size_t ldy, size_t row_begin, size_t row_end) {
  check_view(W);
  MF_ASSERT(isa <= cpu_isa());
  MF_ASSERT(row_begin <= row_end && row_end <= W.rows);
  if (row_begin == row_end || n_tokens == 0) return;
  MF_ASSERT(X != nullptr && Y != nullptr && ldx >= W.cols);
  const bool quantized = W.fmt.kind == QuantKind::Q8_0 || W.fmt.kind == QuantKind::Affine;
  // 4-bit codes decode into a permuted order that only prepared inputs follow.
  const bool natural_decode = quantized && isa != Isa::Scalar &&
                              !(W.fmt.kind == QuantKind::Affine && W.fmt.bits == 4);
  if (n_tokens < kMatmulMinTokens || (quantized && isa != Isa::Scalar && !natural_decode)) {
    // Few tokens (too few to pay for decoding rows to float): for each block of rows
    // (cache-resident across the tokens), Y[t, block] = W[block, :] X[t, :] by the matvec
    // kernel.
    for (size_t r0 = row_begin; r0 < row_end; r0 += kMatvecBlockRows) {
      const size_t r1 = std::min(row_end, r0 + kMatvecBlockRows);
      for (size_t t = 0; t < n_tokens; ++t) rows_on(isa, W, X + t * ldx, Y + t * ldy, r0, r1);
    }
    return;
  }
  if (natural_decode) {
    tile_rows(isa, W, /*simd_decode=*/true, X, ldx, n_tokens, Y, ldy, row_begin, row_end);
    return;
  }
  tile_rows(isa, W, /*simd_decode=*/false, X, ldx, n_tokens, Y, ldy, row_begin, row_end);
}

void matmul_rows(const MatrixView& W, const float* X, size_t ldx, size_t n_tokens, float* Y,
                 size_t ldy, size_t row_begin, size_t row_end) {
  matmul_rows_isa(active_isa(), W, X, ldx, n_tokens, Y, ldy, row_begin, row_end);
}

size_t matmul_task_rows(size_t cols, size_t n_tokens) {
  return std::max(kMatmulRowBlock, min_task_rows(cols, n_tokens));
}

void matmul_isa(Isa isa, const MatrixView& W, const float* X, size_t n_tokens, float* Y,
                ThreadPool& pool) {
  check_view(W);
  if (W.rows == 0 || n_tokens == 0) return;
  pool.parallel_for(
      W.rows,
      [&](size_t begin, size_t end) {
        matmul_rows_isa(isa, W, X, W.cols, n_tokens, Y, W.rows, begin, end);
      },
      matmul_task_rows(W.cols, n_tokens));
}

void matmul(const MatrixView& W, const float* X, size_t n_tokens, float* Y, ThreadPool& pool) {
  matmul_isa(active_isa(), W, X, n_tokens, Y, pool);
}



void prepare_begin(QuantFormat fmt, const float* X, size_t ldx, size_t tokens, size_t n,
                   PreparedX& out) {
  const Isa isa = active_isa();
  out.isa = isa;
  out.X = X;
  out.ldx = ldx;
  out.tokens = tokens;
  out.n = n;
  out.affine = fmt.kind == QuantKind::Affine && isa != Isa::Scalar;
  if (out.affine) {
    out.group = static_cast<size_t>(fmt.group);
    out.perm = detail::affine_perm_block(static_cast<int>(isa), fmt.bits);
    if (out.perm && out.xp.size() < tokens * n) out.xp.resize(tokens * n);
    if (out.xsum.size() < tokens * (n / out.group)) out.xsum.resize(tokens * (n / out.group));
  }
}

void prepare_rows(PreparedX& out, size_t t_begin, size_t t_end) {
  if (out.affine)
    for (size_t t = t_begin; t < t_end; ++t)
      detail::prepare_affine_rows(out.X + t * out.ldx, out.n, out.group, out.perm,
                                  out.perm ? out.xp.data() + t * out.n : nullptr,
                                  out.xsum.data() + t * (out.n / out.group));
}

void matmul_rows_prepared(const MatrixView& W, const PreparedX& x, float* Y, size_t ldy,
                          size_t row_begin, size_t row_end) {
  check_view(W);
  MF_ASSERT(row_begin <= row_end && row_end <= W.rows && x.n == W.cols);
  if (!x.affine) {
    matmul_rows_isa(x.isa, W, x.X, x.ldx, x.tokens, Y, ldy, row_begin, row_end);
    return;
  }
  MF_ASSERT(W.fmt.kind == QuantKind::Affine && x.group == static_cast<size_t>(W.fmt.group));
  if (x.tokens >= kMatmulMinTokens) {  // rows decoded once (in x's order), register tiles
    tile_rows(x.isa, W, /*simd_decode=*/true, x.perm ? x.xp.data() : x.X, x.perm ? x.n : x.ldx,
              x.tokens, Y, ldy, row_begin, row_end);
    return;
  }
  // Tokens in fours (each weight unpacked once per four), rows of the range inside (cache
  // resident across the passes).
  const size_t ng = x.n / x.group;
  constexpr size_t kTokens = 4;
  for (size_t t0 = 0; t0 < x.tokens; t0 += kTokens) {
    const size_t nt = std::min(kTokens, x.tokens - t0);
    const float* xk[kTokens];
    const float* xsum[kTokens];
    for (size_t t = 0; t < nt; ++t) {
      xk[t] = x.perm ? x.xp.data() + (t0 + t) * x.n : x.X + (t0 + t) * x.ldx;
      xsum[t] = x.xsum.data() + (t0 + t) * ng;
    }
#if defined(__x86_64__)
    if (x.isa == Isa::Avx512)
      detail::matmul_affine_avx512(W, xk, xsum, nt, Y + t0 * ldy, ldy, row_begin, row_end);
    else
      detail::matmul_affine_avx2(W, xk, xsum, nt, Y + t0 * ldy, ldy, row_begin, row_end);
#endif
  }
}

}  // namespace moeflux::cpu
