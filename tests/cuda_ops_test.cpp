// Every CUDA backend op against its CPU twin (the reference backend, itself tested against
// float64 in backend_ops_test.cpp), on fresh random inputs (seed printed on failure).
//
// Each test builds host tensors (outputs NaN-poisoned, pitches wider than the rows), mirrors
// them byte for byte into device memory, runs the op on the CPU over the host copies and on
// the GPU over the mirrors, and compares the WHOLE buffers: every element an op writes must
// agree within the tolerance, every element it must not write (padding, other slots) must be
// untouched on both sides, and NaN must sit in the same places.
//
// Skipped, with a message, where the build has no CUDA backend or the machine no GPU (CI); the
// GPU machine runs them (bench/device/cuda.sh).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.hpp"
#include "cuda_available.hpp"
#include "host_tensor.hpp"
#include "random_weights.hpp"

namespace moeflux::test {
namespace {

class CudaOps : public testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why = why_no_cuda(); !why.empty()) GTEST_SKIP() << why;
#ifdef MOEFLUX_HAVE_CUDA
    gpu_ = cuda::make_backend({0});
#endif
    cpu_ = std::make_unique<CpuBackend>(2);
    seed_ = std::random_device{}();
    rng_.seed(seed_);
  }

  // A device copy of a host tensor's whole buffer, viewed like it.
  struct Mirror {
    std::unique_ptr<BackendBuffer> buf;
    Tensor t;
    size_t n = 0;
  };
  Mirror mirror(const HostTensor& h) {
    Mirror m;
    m.n = h.mem.size();
    m.buf = gpu_->allocate(m.n * sizeof(float), "test mirror");
    gpu_->upload(h.mem.data(), m.n, Tensor::matrix(m.buf->data(), 1, m.n, m.n, Memory::Device));
    m.t = h.t;  // h.t views h.mem from its first element
    m.t.data = m.buf->data();
    m.t.memory = Memory::Device;
    return m;
  }
  std::vector<float> fetch(const Mirror& m) {
    std::vector<float> out(m.n);
    gpu_->download(Tensor::matrix(m.buf->data(), 1, m.n, m.n, Memory::Device), out.data(), m.n);
    return out;
  }
  MatrixView dev_matrix(const RandomMatrix& r) {
    const uint8_t* base = gpu_->resident(r.record.data(), r.record.size());
    MatrixView v = r.view;
    auto move = [&](const uint8_t* p) { return p ? base + (p - r.record.data()) : nullptr; };
    v.data = move(v.data);
    v.scales = move(v.scales);
    v.biases = move(v.biases);
    return v;
  }
  const float* dev_floats(const std::vector<float>& v) {
    return reinterpret_cast<const float*>(
        gpu_->resident(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)));
  }

  // CPU result vs GPU result, whole buffers: |a - b| <= rel * max(1, max |a|); NaN where and
  // only where the CPU has NaN.
  void expect_twins(const HostTensor& cpu, const Mirror& gpu, double rel, const char* what) {
    const std::vector<float> g = fetch(gpu);
    ASSERT_EQ(g.size(), cpu.mem.size());
    double scale = 1.0;
    for (float v : cpu.mem)
      if (!std::isnan(v)) scale = std::max(scale, double(std::fabs(v)));
    for (size_t i = 0; i < g.size(); ++i) {
      const float a = cpu.mem[i], b = g[i];
      if (std::isnan(a) || std::isnan(b)) {
        ASSERT_TRUE(std::isnan(a) && std::isnan(b)) << what << ": element " << i << " cpu " << a
                                                    << " gpu " << b << " (seed " << seed_ << ")";
        continue;
      }
      ASSERT_LE(std::fabs(double(a) - b), rel * scale)
          << what << ": element " << i << " cpu " << a << " gpu " << b << " (seed " << seed_ << ")";
    }
  }

  // Random experts of format f ([I, H] gate and up, [H, I] down), expert e over rows in[e] of X
  // [T, H] into slots out[e] of [T * S, H], through expert_ffn on both backends; the slots are
  // compared whole.
  void expect_grouped_experts_match(QuantFormat f, size_t H, size_t I, size_t T, size_t S,
                                    const std::vector<std::vector<int32_t>>& in,
                                    const std::vector<std::vector<int32_t>>& out) {
    struct Expert {
      RandomMatrix gate, up, down;
      MlpWeights dev;
    };
    std::vector<Expert> ex;
    for (size_t e = 0; e < in.size(); ++e) {
      ex.push_back({RandomMatrix(f, I, H, rng_),
                    RandomMatrix(f, I, H, rng_),
                    RandomMatrix(f, H, I, rng_),
                    {}});
      ex.back().dev = {dev_matrix(ex.back().gate), dev_matrix(ex.back().up),
                       dev_matrix(ex.back().down)};
    }
    HostTensor X(T, H), slots(T * S, H);
    X.randomize(rng_);
    Mirror dX = mirror(X), dslots = mirror(slots);
    std::vector<ExpertTask> tasks, dtasks;
    for (size_t e = 0; e < in.size(); ++e) {
      tasks.push_back({{ex[e].gate.view, ex[e].up.view, ex[e].down.view},
                       I,
                       in[e].data(),
                       out[e].data(),
                       in[e].size(),
                       nullptr});
      dtasks.push_back({ex[e].dev, I, in[e].data(), out[e].data(), in[e].size(), nullptr});
    }
    cpu_->expert_ffn(X.t, tasks, slots.t);
    gpu_->expert_ffn(dX.t, dtasks, dslots.t);
    expect_twins(slots, dslots, 3e-5, "expert slots");
  }

  std::unique_ptr<Backend> cpu_, gpu_;
  uint32_t seed_ = 0;
  std::mt19937 rng_;
};

const QuantFormat kFormats[] = {
    QuantFormat::f32(), QuantFormat::f16(),         QuantFormat::bf16(),       QuantFormat::q8_0(),
    QuantFormat::q4(),  QuantFormat::affine(8, 64), QuantFormat::affine(4, 32)};

// The rates --gpu-reads auto weighs: measured once, plausible for a PCIe or NVLink-C2C bus.
TEST_F(CudaOps, HostReadRatesAreMeasuredOnce) {
  const HostReadRates r = gpu_->host_read_rates();
  EXPECT_GT(r.copy, 1e9);
  EXPECT_LT(r.copy, 1e12);
  EXPECT_GT(r.in_place, 0.1e9);
  EXPECT_LT(r.in_place, 2 * r.copy);
  const HostReadRates again = gpu_->host_read_rates();
  EXPECT_EQ(again.copy, r.copy);
  EXPECT_EQ(again.in_place, r.in_place);
}

TEST_F(CudaOps, Embed) {
  for (QuantFormat f : kFormats) {
    SCOPED_TRACE(format_name(f));
    RandomMatrix E(f, 37, 128, rng_);
    const std::vector<int> tokens = {5, 0, 36, 5};
    HostTensor X(tokens.size(), 128);
    Mirror dX = mirror(X);
    cpu_->embed(E.view, tokens, X.t);
    gpu_->embed(dev_matrix(E), tokens, dX.t);
    expect_twins(X, dX, 1e-6, "embed");
  }
}

TEST_F(CudaOps, RmsNormRowsAndStridedHeads) {
  for (bool zc : {false, true}) {
    const std::vector<float> w = random_vector(16, rng_), w2 = random_vector(1000, rng_);
    HostTensor x(3, 4 * 32), y(3, 4 * 16), z(5, 1000);
    x.randomize(rng_);
    z.randomize(rng_);
    Mirror dx = mirror(x), dy = mirror(y), dz = mirror(z);
    cpu_->rmsnorm(x.t.heads(4, 16, 32), w.data(), y.t.heads(4, 16, 16), 1e-6f, zc);
    gpu_->rmsnorm(dx.t.heads(4, 16, 32), dev_floats(w), dy.t.heads(4, 16, 16), 1e-6f, zc);
    cpu_->rmsnorm(z.t, w2.data(), z.t, 1e-6f, zc);  // in place
    gpu_->rmsnorm(dz.t, dev_floats(w2), dz.t, 1e-6f, zc);
    expect_twins(y, dy, 1e-5, "rmsnorm heads");
    expect_twins(z, dz, 1e-5, "rmsnorm rows in place");
    // Rows held in the registers of a 1024-thread block (2, 4 and 7-8 elements per thread), and
    // a row too long for that (the two-pass loop).
    for (size_t dim : {size_t{2048}, size_t{4000}, size_t{7168}, size_t{9000}}) {
      SCOPED_TRACE("dim " + std::to_string(dim));
      const std::vector<float> wd = random_vector(dim, rng_);
      HostTensor r(2, dim), o(2, dim);
      r.randomize(rng_);
      Mirror dr = mirror(r), dout = mirror(o);
      cpu_->rmsnorm(r.t, wd.data(), o.t, 1e-6f, zc);
      gpu_->rmsnorm(dr.t, dev_floats(wd), dout.t, 1e-6f, zc);
      expect_twins(o, dout, 1e-5, "rmsnorm long rows");
    }
  }
}

TEST_F(CudaOps, MatmulEveryFormatFewAndManyRows) {
  for (QuantFormat f : kFormats) {
    for (size_t cols : {size_t{256}, size_t{1024}}) {
      for (size_t T : {1, 2, 3, 8, 9, 70}) {
        SCOPED_TRACE(format_name(f) + " cols " + std::to_string(cols) + " T " + std::to_string(T));
        RandomMatrix A(f, 40, cols, rng_), B(f, 17, cols, rng_), C(f, 130, cols, rng_);
        const MatrixView dA = dev_matrix(A), dB = dev_matrix(B), dC = dev_matrix(C);
        HostTensor X(T, cols), YA(T, 40), YB(T, 17), YC(T, 130);
        X.randomize(rng_);
        YC.randomize(rng_);  // accumulated into
        Mirror dX = mirror(X), dYA = mirror(YA), dYB = mirror(YB), dYC = mirror(YC);
        const std::vector<float> bias = random_vector(17, rng_);
        const float* dbias = dev_floats(bias);
        const Projection p[3] = {
            {&A.view, YA.t}, {&B.view, YB.t, bias.data()}, {&C.view, YC.t, nullptr, true}};
        const Projection dp[3] = {{&dA, dYA.t}, {&dB, dYB.t, dbias}, {&dC, dYC.t, nullptr, true}};
        cpu_->matmul(X.t, p);
        gpu_->matmul(dX.t, dp);
        expect_twins(YA, dYA, 2e-5, "plain");
        expect_twins(YB, dYB, 2e-5, "bias");
        expect_twins(YC, dYC, 2e-5, "accumulate");
      }
    }
  }
}

// The tensor-core GEMM (more than kMatvecRows rows of X, whole 32-column tiles): every format;
// rows of W off the 64-row tile and the 16-row MMA tile; inputs off the 32- and 64-input tiles
// (and both tile widths: 9 and 31 inputs pick 32-input tiles, 64 and more 64-input ones);
// columns from 8 to 128 k-tiles, in steps of two k-tiles (K a multiple of 64) and of one (288:
// 9 k-tiles, in the formats whose groups allow it), and 42 k-tiles whose splits of the columns (few
// blocks) are rounded up to whole steps, leaving the last splits empty; bias and accumulate; X rows
// with a pitch a multiple of 4 (float4 staging) or not (float by float).
TEST_F(CudaOps, MatmulTensorCoreGemm) {
  struct Shape {
    size_t cols, rows[3];  // rows of the plain, bias and accumulate products
  };
  for (QuantFormat f : kFormats) {
    for (const Shape sh :
         {Shape{256, {700, 40, 130}}, Shape{288, {70, 40, 33}}, Shape{1344, {40, 17, 9}},
          Shape{2048, {130, 17, 64}}, Shape{4096, {40, 96, 17}}}) {
      if (!format_accepts_cols(f, sh.cols)) continue;  // 288 columns: not whole groups of 64
      RandomMatrix A(f, sh.rows[0], sh.cols, rng_), B(f, sh.rows[1], sh.cols, rng_),
          C(f, sh.rows[2], sh.cols, rng_);
      const MatrixView dA = dev_matrix(A), dB = dev_matrix(B), dC = dev_matrix(C);
      const std::vector<float> bias = random_vector(sh.rows[1], rng_);
      const float* dbias = dev_floats(bias);
      for (size_t T : {9, 31, 64, 100, 512}) {
        if (sh.cols == 4096 && T == 512) continue;  // the CPU twin's time; 2048 covers 512
        SCOPED_TRACE(format_name(f) + " cols " + std::to_string(sh.cols) + " T " +
                     std::to_string(T));
        HostTensor X(T, sh.cols, T % 2 ? 3 : 4), YA(T, sh.rows[0]), YB(T, sh.rows[1]),
            YC(T, sh.rows[2]);
        X.randomize(rng_);
        YC.randomize(rng_);  // accumulated into
        Mirror dX = mirror(X), dYA = mirror(YA), dYB = mirror(YB), dYC = mirror(YC);
        const Projection p[3] = {
            {&A.view, YA.t}, {&B.view, YB.t, bias.data()}, {&C.view, YC.t, nullptr, true}};
        const Projection dp[3] = {{&dA, dYA.t}, {&dB, dYB.t, dbias}, {&dC, dYC.t, nullptr, true}};
        cpu_->matmul(X.t, p);
        gpu_->matmul(dX.t, dp);
        expect_twins(YA, dYA, 2e-5, "plain");
        expect_twins(YB, dYB, 2e-5, "bias");
        expect_twins(YC, dYC, 2e-5, "accumulate");
      }
    }
  }
  // Products of different formats in one call (a launch per format).
  const size_t cols = 512, T = 77;
  std::vector<RandomMatrix> W;
  for (QuantFormat f : kFormats) W.emplace_back(f, 70 + 3 * W.size(), cols, rng_);
  HostTensor X(T, cols);
  X.randomize(rng_);
  Mirror dX = mirror(X);
  std::vector<HostTensor> Y;
  std::vector<Mirror> dY;
  std::vector<MatrixView> dW;
  for (const RandomMatrix& w : W) Y.emplace_back(T, w.view.rows), dW.push_back(dev_matrix(w));
  std::vector<Projection> p, dp;
  for (size_t i = 0; i < W.size(); ++i) {
    dY.push_back(mirror(Y[i]));
    p.push_back({&W[i].view, Y[i].t});
    dp.push_back({&dW[i], dY[i].t});
  }
  cpu_->matmul(X.t, p);
  gpu_->matmul(dX.t, dp);
  for (size_t i = 0; i < W.size(); ++i)
    expect_twins(Y[i], dY[i], 2e-5, format_name(kFormats[i]).c_str());
}

// Two k-tiles a step give the same bits as one (MOEFLUX_CUDA_GEMM_KSTEP=2 against =1): the
// k-tile stays the unit of scaling and accumulation, and split-K splits the columns in whole
// 64-column steps either way. A product of few blocks (40 rows, 9 inputs, 42 k-tiles: split-K
// with empty last splits) and a wide one (64-input tiles), in the formats whose W is one bf16
// term (the others always take one k-tile).
TEST_F(CudaOps, MatmulTensorCoreGemmStepsAgree) {
  struct Shape {
    size_t rows, cols, T;
  };
  for (QuantFormat f :
       {QuantFormat::bf16(), QuantFormat::q8_0(), QuantFormat::q4(), QuantFormat::affine(8, 64)}) {
    for (const Shape sh : {Shape{40, 1344, 9}, Shape{700, 2048, 100}}) {
      SCOPED_TRACE(format_name(f) + " rows " + std::to_string(sh.rows) + " cols " +
                   std::to_string(sh.cols) + " T " + std::to_string(sh.T));
      RandomMatrix A(f, sh.rows, sh.cols, rng_);
      const MatrixView dA = dev_matrix(A);
      HostTensor X(sh.T, sh.cols), Y(sh.T, sh.rows);
      X.randomize(rng_);
      Mirror dX = mirror(X);
      std::vector<float> got[2];
      for (int step : {1, 2}) {
        ::setenv("MOEFLUX_CUDA_GEMM_KSTEP", step == 1 ? "1" : "2", 1);
        Mirror dY = mirror(Y);
        const Projection dp[1] = {{&dA, dY.t}};
        gpu_->matmul(dX.t, dp);
        got[step - 1] = fetch(dY);
      }
      ::unsetenv("MOEFLUX_CUDA_GEMM_KSTEP");
      ASSERT_EQ(got[0].size(), got[1].size());
      EXPECT_EQ(std::memcmp(got[0].data(), got[1].data(), got[0].size() * sizeof(float)), 0);
    }
  }
}

// Launch shapes of the matrix-vector kernels: enough rows give each warp 4 rows (one row of
// X) or 2 (1024 rows: 2 per warp still fill the GPU; two rows of X), the rows of all products
// counted; a row of X wider than 48 KB of shared memory holds opts into more.
TEST_F(CudaOps, MatmulRowsPerWarpAndWideRows) {
  struct Case {
    size_t rows, cols;
  };
  for (QuantFormat f : {QuantFormat::bf16(), QuantFormat::q8_0(), QuantFormat::q4()}) {
    for (const Case c : {Case{9000, 256}, Case{4300, 512}, Case{300, 13312}}) {
      for (size_t T : {1, 2}) {
        SCOPED_TRACE(format_name(f) + " rows " + std::to_string(c.rows) + " cols " +
                     std::to_string(c.cols) + " T " + std::to_string(T));
        RandomMatrix A(f, c.rows, c.cols, rng_), B(f, 40, c.cols, rng_);
        const MatrixView dA = dev_matrix(A), dB = dev_matrix(B);
        HostTensor X(T, c.cols), YA(T, c.rows), YB(T, 40);
        X.randomize(rng_);
        YB.randomize(rng_);  // accumulated into
        Mirror dX = mirror(X), dYA = mirror(YA), dYB = mirror(YB);
        const Projection p[2] = {{&A.view, YA.t}, {&B.view, YB.t, nullptr, true}};
        const Projection dp[2] = {{&dA, dYA.t}, {&dB, dYB.t, nullptr, true}};
        cpu_->matmul(X.t, p);
        gpu_->matmul(dX.t, dp);
        expect_twins(YA, dYA, 2e-5, "plain");
        expect_twins(YB, dYB, 2e-5, "accumulate");
      }
    }
  }
}

TEST_F(CudaOps, MatmulOddWidthTakesTheGenericPath) {
  for (QuantFormat f : {QuantFormat::f32(), QuantFormat::bf16()}) {
    for (size_t T : {1, 12}) {
      RandomMatrix A(f, 33, 36, rng_);  // 36 columns: no whole 16-byte chunks per row
      const MatrixView dA = dev_matrix(A);
      HostTensor X(T, 36), Y(T, 33);
      X.randomize(rng_);
      Mirror dX = mirror(X), dY = mirror(Y);
      const Projection p{&A.view, Y.t}, dp{&dA, dY.t};
      cpu_->matmul(X.t, {&p, 1});
      gpu_->matmul(dX.t, {&dp, 1});
      expect_twins(Y, dY, 2e-5, "odd width");
    }
  }
}

TEST_F(CudaOps, Rope) {
  const size_t positions = 16, half = 4, dim = 12, heads = 3, T = 5;
  HostTensor cs(positions, half, 0), sn(positions, half, 0), x(T, heads * 2 * dim);
  cs.randomize(rng_);
  sn.randomize(rng_);
  x.randomize(rng_);
  Mirror dcs = mirror(cs), dsn = mirror(sn), dx = mirror(x);
  cpu_->rope(x.t.heads(heads, dim, 2 * dim), {cs.t, sn.t, int(2 * half)}, 7);
  gpu_->rope(dx.t.heads(heads, dim, 2 * dim), {dcs.t, dsn.t, int(2 * half)}, 7);
  expect_twins(x, dx, 1e-6, "rope");
}

// norm_rope (one kernel over queries and keys) against the CPU's composition of rmsnorm and rope:
// q and k as head views of one projection row (q heads strided past a gate half), with and
// without norm weights (or the queries' alone), zero-centred or not, RoPE over all of the head
// or part of it, keys absent, head dims under and over a block's threads.
TEST_F(CudaOps, NormRopeMatchesRmsNormThenRope) {
  for (size_t hd : {size_t{12}, size_t{128}, size_t{192}})
    for (size_t rotary : {hd, hd / 2})
      for (int variant = 0; variant < 5; ++variant) {
        // bit 0: both norms; bit 1: zero-centred; 4: the queries' norm alone
        const bool norms = variant & 1, zc = variant & 2, q_only = variant == 4;
        const size_t nh = 4, nkv = 2, positions = 40, T = variant == 3 ? 1 : 3;
        SCOPED_TRACE("hd " + std::to_string(hd) + " rotary " + std::to_string(rotary) +
                     " variant " + std::to_string(variant));
        HostTensor cs(positions, rotary / 2, 0), sn(positions, rotary / 2, 0),
            x(T, 2 * nh * hd + nkv * hd);
        for (HostTensor* h : {&cs, &sn, &x}) h->randomize(rng_);
        const std::vector<float> wq = random_vector(hd, rng_), wk = random_vector(hd, rng_);
        Mirror dcs = mirror(cs), dsn = mirror(sn), dx = mirror(x);
        auto views = [&](const Tensor& t) {
          return std::pair{t.cols_view(0, 2 * nh * hd).heads(nh, hd, 2 * hd),
                           t.cols_view(2 * nh * hd, nkv * hd).heads(nkv, hd, hd)};
        };
        const auto [q, k] = views(x.t);
        const auto [dq, dk] = views(dx.t);
        const Tensor no_keys = variant == 2 ? Tensor{} : k, dno_keys = variant == 2 ? Tensor{} : dk;
        const int pos0 = 17;
        cpu_->norm_rope(q, norms || q_only ? wq.data() : nullptr, no_keys,
                        norms ? wk.data() : nullptr, 1e-6f, zc, {cs.t, sn.t, int(rotary)}, pos0);
        gpu_->norm_rope(dq, norms || q_only ? dev_floats(wq) : nullptr, dno_keys,
                        norms ? dev_floats(wk) : nullptr, 1e-6f, zc, {dcs.t, dsn.t, int(rotary)},
                        pos0);
        expect_twins(x, dx, 2e-6, "norm_rope");
      }
}

TEST_F(CudaOps, AttentionPromptAndDecodeWithGqaAndGate) {
  for (size_t hd : {size_t{16}, size_t{128}}) {
    for (size_t T : {1, 5}) {
      for (bool gated : {false, true}) {
        SCOPED_TRACE("hd " + std::to_string(hd) + " T " + std::to_string(T));
        const size_t nh = 4, nkv = 2, cap = 40;
        const int pos0 = 29;
        HostTensor q(T, nh * hd), k(T, nkv * hd), v(T, nkv * hd), g(T, nh * hd), out(T, nh * hd),
            K(cap, nkv * hd, 0), V(cap, nkv * hd, 0);
        for (HostTensor* h : {&q, &k, &v, &K, &V}) h->randomize(rng_);
        g.randomize(rng_, -3, 3);
        Mirror dq = mirror(q), dk = mirror(k), dv = mirror(v), dg = mirror(g), dout = mirror(out),
               dK = mirror(K), dV = mirror(V);
        KvCache cache{K.t, V.t}, dcache{dK.t, dV.t};
        AttentionArgs a;
        a.q = q.t.heads(nh, hd, hd);
        a.k = k.t.heads(nkv, hd, hd);
        a.v = v.t.heads(nkv, hd, hd);
        if (gated) a.gate = g.t.heads(nh, hd, hd);
        a.cache = &cache;
        a.pos0 = pos0;
        a.scale = 1.0f / std::sqrt(float(hd));
        a.out = out.t;
        AttentionArgs da = a;
        da.q = dq.t.heads(nh, hd, hd);
        da.k = dk.t.heads(nkv, hd, hd);
        da.v = dv.t.heads(nkv, hd, hd);
        da.gate = gated ? dg.t.heads(nh, hd, hd) : Tensor{};
        da.cache = &dcache;
        da.out = dout.t;
        cpu_->attention(a);
        gpu_->attention(da);
        expect_twins(out, dout, 1e-5, "attention output");
        expect_twins(K, dK, 0, "key cache");
        expect_twins(V, dV, 0, "value cache");
      }
    }
  }
}

// A decode step's token and position ops (embed, rope, attention) recorded once and replayed at
// later tokens and positions — read from device memory, attention's split length derived from
// the position on the device — give bit for bit what the same ops give issued one by one, on
// fresh inputs and poisoned outputs each step, across the positions where the split length
// changes (32 positions a split up to 16 splits of 32 heads, longer after). An op given other
// inputs than the step's, or one that stages host data, is not recorded.
TEST_F(CudaOps, RecordedStepReplaysAtNewTokensAndPositions) {
  const size_t nh = 32, nkv = 4, hd = 128, cap = 2100, vocab = 50, H = 256, half = 32;
  RandomMatrix E(QuantFormat::q8_0(), vocab, H, rng_);
  const MatrixView dE = dev_matrix(E);
  HostTensor cs(cap, half, 0), sn(cap, half, 0), K(cap, nkv * hd, 0), Vc(cap, nkv * hd, 0);
  for (HostTensor* h : {&cs, &sn, &K, &Vc}) h->randomize(rng_);
  Mirror dcs = mirror(cs), dsn = mirror(sn);
  const RopeTable table{dcs.t, dsn.t, int(2 * half)};
  HostTensor X(1, H), q(1, nh * hd), k(1, nkv * hd), v(1, nkv * hd), out(1, nh * hd);
  // What a step reads and writes, twice: the recorded step's and the one-by-one twin's.
  struct Step {
    Mirror X, q, k, v, out, K, V;
  };
  auto make = [&] {
    return Step{mirror(X), mirror(q), mirror(k), mirror(v), mirror(out), mirror(K), mirror(Vc)};
  };
  Step rec = make(), ref = make();
  auto issue = [&](Step& s, int token, int pos) {
    const int t[1] = {token};
    gpu_->embed(dE, t, s.X.t);
    gpu_->rope(s.q.t.heads(nh, hd, hd), table, pos);
    gpu_->rope(s.k.t.heads(nkv, hd, hd), table, pos);
    KvCache cache{s.K.t, s.V.t};
    AttentionArgs a;
    a.q = s.q.t.heads(nh, hd, hd);
    a.k = s.k.t.heads(nkv, hd, hd);
    a.v = s.v.t.heads(nkv, hd, hd);
    a.cache = &cache;
    a.pos0 = pos;
    a.scale = 1.0f / std::sqrt(float(hd));
    a.out = s.out.t;
    gpu_->attention(a);
  };
  auto load = [&](const HostTensor& h, const Mirror& m) {
    gpu_->upload(h.mem.data(), m.n, Tensor::matrix(m.buf->data(), 1, m.n, m.n, Memory::Device));
  };
  auto expect_same_bits = [&](const Mirror& a, const Mirror& b, const char* what, int pos) {
    const std::vector<float> x = fetch(a), y = fetch(b);
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0)
        << what << " at position " << pos << " (seed " << seed_ << ")";
  };
  const uint64_t key = 42;
  const std::vector<int> positions = {3, 31, 32, 100, 511, 512, 513, 700, 1500, 2047, 2099};
  std::uniform_int_distribution<int> pick(0, int(vocab) - 1);
  for (const int pos : positions) {
    const int token = pick(rng_);
    for (HostTensor* h : {&q, &k, &v}) h->randomize(rng_);
    std::fill(X.mem.begin(), X.mem.end(), kNaN);
    std::fill(out.mem.begin(), out.mem.end(), kNaN);
    for (Step* s : {&rec, &ref}) {
      load(q, s->q), load(k, s->k), load(v, s->v), load(X, s->X), load(out, s->out);
    }
    issue(ref, token, pos);  // first: the scratch it grows is there for the recording
    const Backend::StepInputs in{token, pos};
    if (!gpu_->replay(key, in)) {
      ASSERT_EQ(pos, positions[0]) << "a recording was not replayed";
      ASSERT_TRUE(gpu_->begin_recording(key, in));
      issue(rec, token, pos);
      gpu_->end_recording();
    }
    gpu_->synchronize();
    expect_same_bits(rec.X, ref.X, "embedding", pos);
    expect_same_bits(rec.q, ref.q, "rotated queries", pos);
    expect_same_bits(rec.K, ref.K, "key cache", pos);
    expect_same_bits(rec.V, ref.V, "value cache", pos);
    expect_same_bits(rec.out, ref.out, "attention output", pos);
  }
  const Backend::RecordingStats st = gpu_->recording_stats();
  EXPECT_EQ(st.recorded, 1u);
  EXPECT_EQ(st.replayed, positions.size() - 1);
  EXPECT_EQ(st.failed, 0u);

  // Refused while recording: a position or token other than the step's, staged host data.
  ASSERT_TRUE(gpu_->begin_recording(7, {1, 5}));
  EXPECT_THROW(gpu_->rope(ref.q.t.heads(nh, hd, hd), table, 6), Error);
  gpu_->abort_recording("refused");
  ASSERT_TRUE(gpu_->begin_recording(7, {1, 5}));
  const int other[1] = {2};
  EXPECT_THROW(gpu_->embed(dE, other, ref.X.t), Error);
  gpu_->abort_recording("refused");
  ASSERT_TRUE(gpu_->begin_recording(7, {1, 5}));
  const std::vector<float> row(H, 1.0f);
  const int32_t row0[1] = {0};
  EXPECT_THROW(gpu_->scatter_rows(row.data(), H, row0, ref.X.t), Error);
  gpu_->abort_recording("refused");
  EXPECT_FALSE(gpu_->replay(7, {1, 5}));
  EXPECT_EQ(gpu_->recording_stats().failed, 3u);
}

TEST_F(CudaOps, ConvWithSiluCarriesItsState) {
  const size_t C = 300, K = 4;
  for (size_t T : {1, 2, 6, 8, 100}) {  // one thread per channel below 8 rows, per row from 8
    HostTensor x(T, C), y(T, C), state(C, K - 1, 0);
    x.randomize(rng_);
    state.randomize(rng_);
    const std::vector<float> w = random_vector(C * K, rng_);
    Mirror dx = mirror(x), dy = mirror(y), dst = mirror(state);
    cpu_->conv1d_silu(x.t, w.data(), K, state.t, y.t);
    gpu_->conv1d_silu(dx.t, dev_floats(w), K, dst.t, dy.t);
    expect_twins(y, dy, 1e-5, "conv output");
    expect_twins(state, dst, 0, "conv state");
  }
}

// The recurrence below 16 tokens, the chunked form from 16 (chunks of 64: one whole, one
// ragged, a last chunk of one token, several); key dims a multiple of 4 and not (the chunked form
// pads rows to 4), of more than 48 KB of shared memory in the chunk kernel (dk 128, 256), rows per
// thread of the recurrence 8, 16 and 32 (dk 64, 128, 256), value dims not a multiple of 32.
TEST_F(CudaOps, GatedDeltaRule) {
  struct Shape {
    size_t nk, nv, dk, dv;
  };
  // A second backend that keeps prompts on the recurrence (MOEFLUX_CUDA_DELTA_CHUNKED=0): the
  // recurrence over long chunks too, against the same CPU results.
  std::unique_ptr<Backend> recurrent;
#ifdef MOEFLUX_HAVE_CUDA
  setenv("MOEFLUX_CUDA_DELTA_CHUNKED", "0", 1);
  recurrent = cuda::make_backend({0});
  unsetenv("MOEFLUX_CUDA_DELTA_CHUNKED");
#endif
  ASSERT_TRUE(recurrent);
  for (const Shape shape :
       {Shape{2, 4, 64, 48}, Shape{1, 3, 30, 20}, Shape{2, 2, 128, 128}, Shape{1, 2, 256, 40}})
    for (size_t T : {1, 7, 16, 64, 65, 150}) {
      const auto [nk, nv, dk, dv] = shape;
      SCOPED_TRACE("T " + std::to_string(T) + " dk " + std::to_string(dk));
      HostTensor q(T, nk * dk), k(T, nk * dk), v(T, nv * dv), a(T, nv), b(T, nv), out(T, nv * dv),
          S(nv, dk * dv, 0);
      for (HostTensor* h : {&q, &k, &v, &a, &b}) h->randomize(rng_);
      S.randomize(rng_, -0.1f, 0.1f);
      const std::vector<float> A_log = random_vector(nv, rng_), dt = random_vector(nv, rng_);
      auto args = [&](const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& a_,
                      const Tensor& b_, const float* A, const float* dt_bias, DeltaNetState* state,
                      const Tensor& out_) {
        DeltaRuleArgs d;
        d.q = q_.heads(nk, dk, dk);
        d.k = k_.heads(nk, dk, dk);
        d.v = v_.heads(nv, dv, dv);
        d.a = a_;
        d.b = b_;
        d.A_log = A;
        d.dt_bias = dt_bias;
        d.state = state;
        d.out = out_.heads(nv, dv, dv);
        return d;
      };
      // The GPU runs first, on copies of the inputs (every backend may overwrite q and k).
      auto on_gpu = [&](Backend& be, Mirror& dout, Mirror& dS) {
        Mirror dq = mirror(q), dk_ = mirror(k), dv_ = mirror(v), da = mirror(a), db = mirror(b);
        dout = mirror(out);
        dS = mirror(S);
        DeltaNetState dst{Tensor{}, dS.t};
        const DeltaRuleArgs g =
            args(dq.t, dk_.t, dv_.t, da.t, db.t, dev_floats(A_log), dev_floats(dt), &dst, dout.t);
        gpu_->synchronize();  // the mirrors are written on gpu_'s stream
        be.gated_delta_rule(g);
        be.synchronize();
      };
      Mirror dout, dS, rout, rS;
      on_gpu(*gpu_, dout, dS);
      if (T >= 16) on_gpu(*recurrent, rout, rS);
      DeltaNetState st{Tensor{}, S.t};
      cpu_->gated_delta_rule(args(q.t, k.t, v.t, a.t, b.t, A_log.data(), dt.data(), &st, out.t));
      expect_twins(out, dout, 1e-5, "delta rule output");
      expect_twins(S, dS, 1e-5, "delta rule state");
      if (T >= 16) {
        expect_twins(out, rout, 1e-5, "delta rule output, recurrence");
        expect_twins(S, rS, 1e-5, "delta rule state, recurrence");
      }
    }
}

TEST_F(CudaOps, GatedRmsNorm) {
  const size_t T = 3, heads = 4, dim = 128;
  HostTensor x(T, heads * dim), z(T, heads * 2 * dim), y(T, heads * dim);
  x.randomize(rng_);
  z.randomize(rng_, -4, 4);
  const std::vector<float> w = random_vector(dim, rng_);
  Mirror dx = mirror(x), dz = mirror(z), dy = mirror(y);
  cpu_->rmsnorm_gated(x.t.heads(heads, dim, dim), z.t.heads(heads, dim, 2 * dim), w.data(), 1e-6f,
                      y.t.heads(heads, dim, dim));
  gpu_->rmsnorm_gated(dx.t.heads(heads, dim, dim), dz.t.heads(heads, dim, 2 * dim), dev_floats(w),
                      1e-6f, dy.t.heads(heads, dim, dim));
  expect_twins(y, dy, 1e-5, "gated rmsnorm");
}

TEST_F(CudaOps, SoftmaxTopKRouting) {
  const size_t T = 9, E = 128, K = 8;
  for (bool norm : {false, true}) {
    HostTensor logits(T, E);
    logits.randomize(rng_, -4, 4);
    logits.at(2, 3) = logits.at(2, 9) = 5.0f;  // a tie: the lower index ranks first
    Mirror dl = mirror(logits);
    std::vector<int32_t> ids(T * K, -1), dids(T * K, -1);
    std::vector<float> w(T * K, kNaN), dw(T * K, kNaN);
    HostTensor dev_w_host(1, T * K, 0);
    Mirror ddw = mirror(dev_w_host);
    cpu_->route(logits.t, {RouterKind::SoftmaxTopK, int(K), norm}, {ids.data(), w.data(), K});
    gpu_->route(dl.t, {RouterKind::SoftmaxTopK, int(K), norm},
                {dids.data(), dw.data(), K, ddw.t.f32()});
    gpu_->synchronize();
    EXPECT_EQ(ids, dids);
    for (size_t i = 0; i < T * K; ++i) ASSERT_NEAR(w[i], dw[i], 1e-6) << i;
    const std::vector<float> on_device = fetch(ddw);
    for (size_t i = 0; i < T * K; ++i) ASSERT_EQ(on_device[i], dw[i]) << "device copy " << i;
  }
}

TEST_F(CudaOps, GroupedExpertFfnFewAndManyRows) {
  const size_t H = 256, I = 128, T = 24, S = 3;
  for (QuantFormat f : {QuantFormat::bf16(), QuantFormat::q8_0(), QuantFormat::q4()}) {
    SCOPED_TRACE(format_name(f));
    // Expert 0: one row; expert 1: three rows (matrix-vector); expert 2: twenty rows (GEMM).
    // Every slot written once: row t's slots are 3t + rank (expert 0 had slot 13 = 3 * 4 + 1,
    // expert 2's too, and the CPU's parallel pass let either write land last).
    std::vector<std::vector<int32_t>> in = {{4}, {0, 2, 3}, {}}, out = {{12}, {0, 6, 9}, {}};
    for (int32_t t = 4; t < 24; ++t) {
      in[2].push_back(t);
      out[2].push_back(t * 3 + 1);
    }
    expect_grouped_experts_match(f, H, I, T, S, in, out);
  }
}

// Experts over many rows each (the GEMM path for gate, up and down: x_rows gathers, kSwiglu,
// y_rows scatters), every format, Qwen3-like proportions at a smaller width; rows gathered in
// shuffled order and scattered to shuffled slots. Rows per expert around 32 (32-input tiles)
// and up to 100 (64-input tiles).
TEST_F(CudaOps, GroupedExpertFfnTensorCoreGemm) {
  const size_t H = 512, I = 192, T = 100, S = 4;
  for (const std::vector<size_t>& counts :
       {std::vector<size_t>{9, 20, 31, 33}, std::vector<size_t>{9, 33, 64, 100}}) {
    for (QuantFormat f : kFormats) {
      SCOPED_TRACE(format_name(f) + " experts of " + std::to_string(counts[1]) + ", " +
                   std::to_string(counts[3]) + " rows");
      std::vector<int32_t> tokens(T), free_slots(T * S);
      for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(i);
      for (size_t i = 0; i < free_slots.size(); ++i) free_slots[i] = int32_t(i);
      std::shuffle(free_slots.begin(), free_slots.end(), rng_);
      std::vector<std::vector<int32_t>> in, out;
      size_t next_slot = 0;
      for (size_t n : counts) {
        std::shuffle(tokens.begin(), tokens.end(), rng_);
        in.emplace_back(tokens.begin(), tokens.begin() + n);
        out.emplace_back(free_slots.begin() + next_slot, free_slots.begin() + next_slot + n);
        next_slot += n;
      }
      expect_grouped_experts_match(f, H, I, T, S, in, out);
    }
  }
}

// Pairs (row, rank) of router ids: few rows, one matrix-vector product per pair; prompts,
// grouped by expert on the device and a GEMM per expert (tensor-core when the records are
// 16-byte aligned, SIMT when not), one expert never chosen.
TEST_F(CudaOps, IndexedExpertFfnRoutesOnTheDevice) {
  struct Case {
    size_t E, T, K, alignment;
  };
  // 3 rows: a matrix-vector product per pair; 12 rows of 2 among 40 experts: more than 8 rows
  // but fewer than kGroupedPairsPerExpert pairs per expert, one product per pair too (what
  // MOEFLUX_DEVICE_ROUTING=all routes there); the rest grouped by expert.
  for (const Case c : {Case{5, 3, 2, 256}, Case{40, 12, 2, 256}, Case{16, 40, 4, 256},
                       Case{12, 130, 3, 256}, Case{12, 70, 3, 8}}) {
    const size_t E = c.E, T = c.T, K = c.K, S = K + 1;
    // [T, K], each row's ids distinct (as top-k's), expert E - 1 never chosen.
    std::vector<int32_t> ids;
    if (T == 3) {
      ids = {4, 0, 2, 4, 1, 3};
    } else {
      std::vector<int32_t> order(E - 1);
      for (size_t e = 0; e + 1 < E; ++e) order[e] = int32_t(e);
      for (size_t t = 0; t < T; ++t) {
        std::shuffle(order.begin(), order.end(), rng_);
        ids.insert(ids.end(), order.begin(), order.begin() + K);
      }
    }
    // Small experts (one row per warp), and large ones: gate+up of 6 x 2048 rows take 4 rows
    // per warp (dual), down of 6 x 1024 rows 2.
    for (const auto& [H, I] : {std::pair<size_t, size_t>{256, 64}, {1024, 2048}})
      for (QuantFormat f : {QuantFormat::bf16(), QuantFormat::q8_0(), QuantFormat::q4()}) {
        SCOPED_TRACE(format_name(f) + " H " + std::to_string(H) + " I " + std::to_string(I) +
                     " E " + std::to_string(E) + " T " + std::to_string(T) + " alignment " +
                     std::to_string(c.alignment));
        // Records laid out as the package does: gate | up | down, each a matrix_layout record.
        const MatrixLayout lg = matrix_layout(f, I, H), ld = matrix_layout(f, H, I);
        const size_t rb = (2 * lg.total_bytes + ld.total_bytes + 4095) / 4096 * 4096;
        std::vector<uint8_t> host(E * rb);
        for (size_t e = 0; e < E; ++e) {
          RandomMatrix g(f, I, H, rng_), u(f, I, H, rng_), d(f, H, I, rng_);
          std::memcpy(host.data() + e * rb, g.record.data(), lg.total_bytes);
          std::memcpy(host.data() + e * rb + lg.total_bytes, u.record.data(), lg.total_bytes);
          std::memcpy(host.data() + e * rb + 2 * lg.total_bytes, d.record.data(), ld.total_bytes);
        }
        const uint8_t* dev = gpu_->resident(host.data(), host.size());
        std::vector<const uint8_t*> cpu_table(E), gpu_table(E);
        for (size_t e = 0; e < E; ++e)
          cpu_table[e] = host.data() + e * rb, gpu_table[e] = dev + e * rb;
        const auto* dtable = reinterpret_cast<const uint8_t* const*>(
            gpu_->resident(reinterpret_cast<const uint8_t*>(gpu_table.data()), E * sizeof(void*)));
        IndexedExperts ix;
        ix.experts = E;
        ix.gate = {f, I, H, 0};
        ix.up = {f, I, H, lg.total_bytes};
        ix.down = {f, H, I, 2 * lg.total_bytes};
        IndexedExperts dix = ix;
        ix.records = cpu_table.data();
        dix.records = dtable;
        dix.record_alignment = c.alignment;  // 8: as if misaligned (the SIMT GEMM)
        const auto* dids = reinterpret_cast<const int32_t*>(
            gpu_->resident(reinterpret_cast<const uint8_t*>(ids.data()), ids.size() * 4));
        HostTensor X(T, H), slots(T * S, H);
        X.randomize(rng_);
        Mirror dX = mirror(X), dslots = mirror(slots);
        cpu_->expert_ffn_indexed(X.t, ids.data(), K, ix, slots.t, S);
        gpu_->expert_ffn_indexed(dX.t, dids, K, dix, dslots.t, S);
        expect_twins(slots, dslots, 3e-5, "indexed expert slots");
      }
  }
}

// The greedy pick on the device against the CPU's, over vocabulary-sized rows spanning many
// blocks: random; the maximum twice, far apart; NaN sprinkled with the maximum last; every
// value NaN; -inf and NaN only; an infinity.
TEST_F(CudaOps, ArgmaxRowsMatchTheCpu) {
  const size_t R = 7, n = 151936;
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  HostTensor x(R, n);
  x.randomize(rng_);
  float* row[R];
  for (size_t r = 0; r < R; ++r) row[r] = x.t.row(r);
  row[1][7] = row[1][100000] = 50.0f;
  for (size_t i = 0; i < n; i += 97) row[2][i] = nan;
  row[2][n - 1] = 50.0f;
  std::fill(row[3], row[3] + n, nan);
  for (size_t i = 0; i < n; ++i) row[4][i] = i % 3 ? -inf : nan;
  row[5][123456] = inf;
  std::fill(row[6], row[6] + n, -1.0f);  // -0 before +0, both the maximum: -0 == +0, lower id
  row[6][5] = -0.0f;
  row[6][3] = 0.0f;
  row[6][9] = -0.0f;
  row[6][2] = -0.0f;
  Mirror dx = mirror(x);
  std::vector<int32_t> cpu_id(R, -7), gpu_id(R, -8);
  std::vector<uint8_t> cpu_ok(R, 7), gpu_ok(R, 8);
  cpu_->argmax_rows(x.t, cpu_id, cpu_ok);
  gpu_->argmax_rows(dx.t, gpu_id, gpu_ok);
  EXPECT_EQ(gpu_id, cpu_id);
  EXPECT_EQ(gpu_ok, cpu_ok);
  EXPECT_EQ(cpu_id[1], 7);
  EXPECT_EQ(cpu_id[2], int32_t(n - 1));
  EXPECT_EQ(cpu_id[3], 0);
  EXPECT_EQ(cpu_id[4], 1);
  EXPECT_EQ(cpu_id[5], 123456);
  EXPECT_EQ(cpu_id[6], 2);
  EXPECT_EQ(cpu_ok, (std::vector<uint8_t>{1, 1, 0, 0, 0, 0, 1}));
}

// top_k_rows on the device against the CPU twin: a vocabulary-sized row (chunks of 2,048, the
// last ragged) with ties across chunks, NaN and infinities, -0 against +0, a row shorter than a
// chunk with k equal to its length, and k beyond the device's limit (read on the host).
TEST_F(CudaOps, TopKRowsMatchTheCpu) {
  const size_t R = 4, n = 151936;
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  HostTensor x(R, n);
  x.randomize(rng_, -20, 20);
  float* row[R];
  for (size_t r = 0; r < R; ++r) row[r] = x.t.row(r);
  for (size_t i : {5, 2048, 70000, 151935}) row[0][i] = 25.0f;  // a tie across chunks
  for (size_t i = 0; i < n; i += 13) row[1][i] = nan;
  row[1][100] = inf;
  row[1][101] = -inf;
  std::fill(row[2], row[2] + n, -1.0f);  // all equal but for zeros of both signs
  row[2][4097] = -0.0f;
  row[2][4096] = 0.0f;
  for (size_t i = 0; i < n; ++i) row[3][i] = i % 2 ? -inf : nan;  // nothing finite
  Mirror dx = mirror(x);
  for (size_t k : {1, 40, 256, 300}) {
    SCOPED_TRACE("k " + std::to_string(k));
    std::vector<TopEntry> cpu_best(R * k, TopEntry{-7, 7}), gpu_best(R * k, TopEntry{-8, 8});
    std::vector<uint8_t> cpu_ok(R, 7), gpu_ok(R, 8);
    cpu_->top_k_rows(x.t, k, cpu_best, cpu_ok);
    gpu_->top_k_rows(dx.t, k, gpu_best, gpu_ok);
    EXPECT_EQ(gpu_ok, cpu_ok);
    for (size_t i = 0; i < R * k; ++i) {
      ASSERT_EQ(gpu_best[i].id, cpu_best[i].id) << "row " << i / k << " rank " << i % k;
      ASSERT_EQ(gpu_best[i].value, cpu_best[i].value) << "row " << i / k << " rank " << i % k;
    }
    EXPECT_EQ(cpu_best[0].id, 5);
    EXPECT_EQ(cpu_best[2 * k].id, 4096);
  }
  EXPECT_EQ(std::vector<uint8_t>({1, 0, 1, 0}), [&] {
    std::vector<TopEntry> b(R);
    std::vector<uint8_t> ok(R);
    gpu_->top_k_rows(dx.t, 1, b, ok);
    return ok;
  }());
  // A row shorter than one chunk, k its whole length.
  HostTensor s(2, 37);
  s.randomize(rng_);
  s.at(1, 3) = s.at(1, 30) = 2.0f;
  Mirror ds = mirror(s);
  std::vector<TopEntry> cpu_best(2 * 37), gpu_best(2 * 37);
  std::vector<uint8_t> cpu_ok(2), gpu_ok(2);
  cpu_->top_k_rows(s.t, 37, cpu_best, cpu_ok);
  gpu_->top_k_rows(ds.t, 37, gpu_best, gpu_ok);
  for (size_t i = 0; i < cpu_best.size(); ++i) {
    EXPECT_EQ(gpu_best[i].id, cpu_best[i].id) << i;
    EXPECT_EQ(gpu_best[i].value, cpu_best[i].value) << i;
  }
}

TEST_F(CudaOps, LatentAttentionKeysWiderThanValuesSharingTheCache) {
  // MLA's absorbed decode: one kv head, keys [latent 512 | rope 64], values = the latent part,
  // the cache's v a column view of its k.
  const size_t nh = 4, L = 512, R = 64, dk = L + R, cap = 20;
  for (size_t T : {1, 3}) {
    const int pos0 = 11;
    HostTensor q(T, nh * dk), k(T, dk), out(T, nh * L), K(cap, dk, 0);
    for (HostTensor* h : {&q, &k, &K}) h->randomize(rng_);
    Mirror dq = mirror(q), dk_ = mirror(k), dout = mirror(out), dK = mirror(K);
    KvCache cache{K.t, K.t.cols_view(0, L)}, dcache{dK.t, dK.t.cols_view(0, L)};
    AttentionArgs a;
    a.q = q.t.heads(nh, dk, dk);
    a.k = k.t.heads(1, dk, dk);
    a.v = k.t.cols_view(0, L).heads(1, L, L);
    a.cache = &cache;
    a.pos0 = pos0;
    a.scale = 0.05f;
    a.out = out.t;
    AttentionArgs d = a;
    d.q = dq.t.heads(nh, dk, dk);
    d.k = dk_.t.heads(1, dk, dk);
    d.v = dk_.t.cols_view(0, L).heads(1, L, L);
    d.cache = &dcache;
    d.out = dout.t;
    cpu_->attention(a);
    gpu_->attention(d);
    expect_twins(out, dout, 1e-5, "latent attention");
    expect_twins(K, dK, 0, "latent cache");
  }
}

TEST_F(CudaOps, HeadMatmulAndCopy) {
  const size_t heads = 3, C = 128, R = 64;
  for (QuantFormat f : {QuantFormat::bf16(), QuantFormat::q8_0()}) {
    for (size_t T : {1, 12}) {
      RandomMatrix W(f, heads * R, C, rng_);
      const MatrixView dW = dev_matrix(W);
      HostTensor X(T, heads * C), Y(T, heads * R), Z(T, heads * R);
      X.randomize(rng_);
      Mirror dX = mirror(X), dY = mirror(Y), dZ = mirror(Z);
      cpu_->head_matmul(X.t.heads(heads, C, C), W.view, Y.t.heads(heads, R, R));
      gpu_->head_matmul(dX.t.heads(heads, C, C), dW, dY.t.heads(heads, R, R));
      expect_twins(Y, dY, 2e-5, "head_matmul");
      cpu_->copy(Y.t.heads(heads, R, R), Z.t.heads(heads, R, R));
      gpu_->copy(dY.t.heads(heads, R, R), dZ.t.heads(heads, R, R));
      expect_twins(Z, dZ, 2e-5, "copy");
    }
  }
}

TEST_F(CudaOps, GroupedSigmoidRouting) {
  const size_t T = 5, E = 64, K = 6;
  for (bool norm : {false, true}) {
    HostTensor logits(T, E);
    logits.randomize(rng_, -4, 4);
    const std::vector<float> bias = random_vector(E, rng_);
    Mirror dl = mirror(logits);
    RouterSpec spec{RouterKind::SigmoidGroupTopK, int(K), norm};
    spec.n_group = 8;
    spec.topk_group = 3;
    spec.routed_scaling_factor = 2.5f;
    spec.bias = bias.data();
    RouterSpec dspec = spec;
    dspec.bias = dev_floats(bias);
    std::vector<int32_t> ids(T * K, -1), dids(T * K, -1);
    std::vector<float> w(T * K, kNaN), dw(T * K, kNaN);
    HostTensor dw_host(1, T * K, 0);
    Mirror ddw = mirror(dw_host);
    cpu_->route(logits.t, spec, {ids.data(), w.data(), K});
    gpu_->route(dl.t, dspec, {dids.data(), dw.data(), K, ddw.t.f32()});
    gpu_->synchronize();
    EXPECT_EQ(ids, dids);
    for (size_t i = 0; i < T * K; ++i) ASSERT_NEAR(w[i], dw[i], 1e-5) << i;
  }
}

TEST_F(CudaOps, CombineWithSharedGate) {
  const size_t T = 3, S = 3, K = 2, H = 40;
  for (bool gate : {false, true}) {
    HostTensor slots(T * S, H), out(T, H), g(T, 1), w(1, T * K, 0);
    slots.randomize(rng_);
    out.randomize(rng_);
    g.randomize(rng_, -3, 3);
    w.randomize(rng_);
    Mirror dslots = mirror(slots), dout = mirror(out), dg = mirror(g), dw = mirror(w);
    CombineArgs a;
    a.slots = slots.t;
    a.slots_per_token = S;
    a.routed = w.t.f32();
    a.k = K;
    if (gate) a.gate = g.t;
    a.out = out.t;
    CombineArgs d = a;
    d.slots = dslots.t;
    d.routed = dw.t.f32();
    d.gate = gate ? dg.t : Tensor{};
    d.out = dout.t;
    cpu_->combine(a);
    gpu_->combine(d);
    expect_twins(out, dout, 1e-6, "combine");
  }
}

// The combine with the next layer's input norm: bit for bit the GPU's combine() then rmsnorm()
// (one pass over the row where the backend fuses them), for rows held in registers (1, 2, 4 or 8
// elements a thread), short rows and rows too long for registers; and the CPU's twin.
TEST_F(CudaOps, CombineThenNormInOnePass) {
  const size_t S = 9, K = 8;
  for (size_t H : {size_t{40}, size_t{300}, size_t{1000}, size_t{2048}, size_t{4000}, size_t{7168},
                   size_t{9000}}) {
    for (size_t T : {size_t{1}, size_t{5}}) {
      for (bool zc : {false, true}) {
        SCOPED_TRACE("H " + std::to_string(H) + " T " + std::to_string(T) + " zc " +
                     std::to_string(zc));
        HostTensor slots(T * S, H), out(T, H), g(T, 1), w(1, T * K, 0), xn(T, H);
        slots.randomize(rng_);
        out.randomize(rng_);
        g.randomize(rng_, -3, 3);
        w.randomize(rng_);
        const std::vector<float> nw = random_vector(H, rng_);
        const float* dnw = dev_floats(nw);
        Mirror dslots = mirror(slots), dg = mirror(g), dw = mirror(w);
        Mirror fused_out = mirror(out), fused_xn = mirror(xn);  // xn: NaN-poisoned
        Mirror split_out = mirror(out), split_xn = mirror(xn);
        CombineArgs a;
        a.slots = slots.t;
        a.slots_per_token = S;
        a.routed = w.t.f32();
        a.k = K;
        a.gate = g.t;
        a.out = out.t;
        CombineArgs d = a;
        d.slots = dslots.t;
        d.routed = dw.t.f32();
        d.gate = dg.t;
        d.out = fused_out.t;
        cpu_->combine_norm(a, nw.data(), 1e-6f, zc, xn.t);
        gpu_->combine_norm(d, dnw, 1e-6f, zc, fused_xn.t);
        expect_twins(out, fused_out, 1e-6, "combine");
        expect_twins(xn, fused_xn, 1e-5, "combine's norm");
        CombineArgs plain = d;  // the same on the GPU in two ops
        plain.out = split_out.t;
        gpu_->combine(plain);
        gpu_->rmsnorm(split_out.t, dnw, split_xn.t, 1e-6f, zc);
        EXPECT_EQ(fetch(split_out), fetch(fused_out));
        const std::vector<float> a_xn = fetch(split_xn), b_xn = fetch(fused_xn);
        ASSERT_EQ(a_xn.size(), b_xn.size());
        for (size_t i = 0; i < a_xn.size(); ++i) {  // NaN in the pitch's padding on both
          if (!(std::isnan(a_xn[i]) && std::isnan(b_xn[i]))) {
            ASSERT_EQ(a_xn[i], b_xn[i]) << "element " << i << " (seed " << seed_ << ")";
          }
        }
      }
    }
  }
}

// Host rows into chosen rows of a device tensor, in issue order; the host rows may be reused
// as soon as the call returns (they are staged).
TEST_F(CudaOps, ScatterRowsFromHost) {
  HostTensor dst(10, 37), src(3, 37, 5);
  dst.randomize(rng_);
  src.randomize(rng_);
  Mirror d = mirror(dst);
  const std::vector<int32_t> rows = {7, 0, 4};
  gpu_->scatter_rows(src.t.row(0), src.t.pitch(), rows, d.t);
  cpu_->scatter_rows(src.t.row(0), src.t.pitch(), rows, dst.t);
  std::fill(src.mem.begin(), src.mem.end(), kNaN);  // reused at once
  expect_twins(dst, d, 0, "scatter rows");
}

TEST_F(CudaOps, MemoryTiersAndErrors) {
  HostTensor h(5, 10);
  h.randomize(rng_);
  Mirror d = mirror(h);
  gpu_->fill(d.t.rows_view(1, 2), 2.5f);
  cpu_->fill(h.t.rows_view(1, 2), 2.5f);
  expect_twins(h, d, 0, "fill");
  EXPECT_THROW(gpu_->allocate(size_t{1} << 62, "an impossible buffer"), Error);
  // Expert tiers: a record copied into the device tier from the page-locked RAM tier arrives
  // whole after fence().
  const size_t record = 8192;
  auto ram = gpu_->ram_tier_memory(2, record);
  auto dev = gpu_->expert_tier_memory(3, record);
  ASSERT_TRUE(ram && dev);
  EXPECT_TRUE(ram->host_accessible());
  EXPECT_FALSE(dev->host_accessible());
  std::vector<float> src = random_vector(record / sizeof(float), rng_);
  std::memcpy(ram->slot_data(1), src.data(), record);
  dev->copy_in(dev->slot_data(2), ram->slot_data(1), record);
  dev->fence();
  std::vector<float> back(record / sizeof(float), kNaN);
  auto slot_tensor = [&](size_t slot) {
    return Tensor::matrix(dev->slot_data(slot), 1, back.size(), back.size(), Memory::Device);
  };
  gpu_->download(slot_tensor(2), back.data(), back.size());
  EXPECT_EQ(back, src);
  // Copy windows: closing one does not wait; it lands (polled) with every byte counted once.
  EXPECT_EQ(dev->close_window(), 0u);  // nothing outstanding after the fence
  std::vector<float> src2 = random_vector(record / sizeof(float), rng_);
  std::memcpy(ram->slot_data(0), src2.data(), record);
  EXPECT_NE(dev->copy_in(dev->slot_data(0), ram->slot_data(0), record), nullptr);
  dev->copy_in(dev->slot_data(1), ram->slot_data(1), record);
  const uint64_t window = dev->close_window();
  EXPECT_GT(window, 0u);
  while (!dev->landed(window)) {
  }
  const TierMemory::Transferred moved = dev->take_transferred();
  EXPECT_EQ(moved.bytes, double(3 * record));  // the fenced copy, then this window's two
  EXPECT_GT(moved.seconds, 0.0);
  EXPECT_EQ(dev->take_transferred().bytes, 0.0);
  gpu_->download(slot_tensor(0), back.data(), back.size());
  EXPECT_EQ(back, src2);
  gpu_->download(slot_tensor(1), back.data(), back.size());
  EXPECT_EQ(back, src);
}

}  // namespace
}  // namespace moeflux::test
