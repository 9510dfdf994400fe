// CPU weight kernels (backend/cpu/matvec.hpp) against an independent float64 reference.
//
// Records are filled with random codes straight from the layout description (not through the
// quantizer), so every code value and bit position is exercised; x is random in [-1, 1); outputs
// are poisoned with NaN before each call.
#include "backend/cpu/matvec.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "random_weights.hpp"

namespace moeflux::cpu {
namespace {

using test::kNaN;
using test::RandomMatrix;
using test::random_vector;
using test::Reference;
using test::reference;
using test::ref_value;


std::vector<Isa> available_isas() {
  std::vector<Isa> isas{Isa::Scalar};
  if (cpu_isa() >= Isa::Avx2) isas.push_back(Isa::Avx2);
  if (cpu_isa() >= Isa::Avx512) isas.push_back(Isa::Avx512);
  return isas;
}

// Legal row lengths for a format are multiples of its unit (1 for unscaled formats).
size_t col_unit(QuantFormat fmt) {
  return fmt.kind == QuantKind::F32 || fmt.kind == QuantKind::F16 || fmt.kind == QuantKind::BF16
             ? 1
             : static_cast<size_t>(fmt.group);
}

struct Shape {
  size_t rows, cols;
};

// Fixed edge shapes plus seeded random ones; rows deliberately not multiples of 4 or 16.
std::vector<Shape> shapes_for(QuantFormat fmt, std::mt19937& rng) {
  const size_t u = col_unit(fmt);
  std::vector<Shape> shapes{{1, u},      {1, 1024},   {5, 3 * u}, {17, 7 * u},
                            {33, 5 * u}, {333, 1024}, {3, 4096}};
  std::uniform_int_distribution<size_t> rows(1, 70), units(1, 2048 / u);
  for (int i = 0; i < 4; ++i) shapes.push_back({rows(rng), u * units(rng)});
  return shapes;
}

class MatvecTest : public ::testing::TestWithParam<QuantFormat> {};

TEST_P(MatvecTest, DequantizeRowMatchesLayoutExactly) {
  std::mt19937 rng(1234);
  for (const Shape& s : shapes_for(GetParam(), rng)) {
    RandomMatrix m(GetParam(), s.rows, s.cols, rng);
    std::vector<float> out(s.cols);
    for (size_t r : {size_t{0}, s.rows / 2, s.rows - 1}) {
      std::fill(out.begin(), out.end(), kNaN);
      dequantize_row(m.view, r, out.data());
      for (size_t c = 0; c < s.cols; ++c) {
        // Every format's value is exact in float (q·s has ≤ 16 significant bits), and q·s + b
        // rounds once, so the float decode equals the rounded float64 value.
        ASSERT_EQ(out[c], static_cast<float>(ref_value(m.view, r, c)))
            << s.rows << "x" << s.cols << " r=" << r << " c=" << c;
      }
    }
  }
}

TEST_P(MatvecTest, EveryIsaMatchesReference) {
  std::mt19937 rng(99);
  for (const Shape& s : shapes_for(GetParam(), rng)) {
    RandomMatrix m(GetParam(), s.rows, s.cols, rng);
    const std::vector<float> x = random_vector(s.cols, rng);
    const Reference ref = reference(m.view, x.data());
    std::vector<float> y(s.rows);

    std::fill(y.begin(), y.end(), kNaN);
    matvec_scalar_rows(m.view, x.data(), y.data(), 0, s.rows);
    for (size_t r = 0; r < s.rows; ++r) {
      // float64 accumulation, one final rounding to float.
      ASSERT_NEAR(y[r], ref.y[r], 1e-6 * std::fabs(ref.y[r]) + 1e-30) << "scalar r=" << r;
    }
    for (Isa isa : available_isas()) {
      std::fill(y.begin(), y.end(), kNaN);
      matvec_rows_isa(isa, m.view, x.data(), y.data(), 0, s.rows);
      for (size_t r = 0; r < s.rows; ++r) {
        ASSERT_NEAR(y[r], ref.y[r], ref.tol[r])
            << isa_name(isa) << " " << s.rows << "x" << s.cols << " r=" << r;
      }
    }
  }
}

TEST_P(MatvecTest, RowRangeWritesOnlyItsRows) {
  std::mt19937 rng(7);
  const size_t u = col_unit(GetParam());
  RandomMatrix m(GetParam(), 37, u == 1 ? 131 : 4 * u, rng);
  const std::vector<float> x = random_vector(m.view.cols, rng);
  const Reference ref = reference(m.view, x.data());
  for (Isa isa : available_isas()) {
    std::vector<float> y(m.view.rows, kNaN);
    matvec_rows_isa(isa, m.view, x.data(), y.data(), 5, 22);
    for (size_t r = 0; r < m.view.rows; ++r) {
      if (r < 5 || r >= 22) {
        EXPECT_TRUE(std::isnan(y[r])) << isa_name(isa) << " wrote row " << r;
      } else {
        EXPECT_NEAR(y[r], ref.y[r], ref.tol[r]) << isa_name(isa) << " r=" << r;
      }
    }
  }
}

TEST_P(MatvecTest, ThreadedMatvecMatchesReference) {
  std::mt19937 rng(2024);
  for (size_t threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (const Shape& s : shapes_for(GetParam(), rng)) {
      RandomMatrix m(GetParam(), s.rows, s.cols, rng);
      const std::vector<float> x = random_vector(s.cols, rng);
      const Reference ref = reference(m.view, x.data());
      std::vector<float> y(s.rows, kNaN);
      matvec(m.view, x.data(), y.data(), pool);
      for (size_t r = 0; r < s.rows; ++r) {
        ASSERT_NEAR(y[r], ref.y[r], ref.tol[r])
            << threads << " threads " << s.rows << "x" << s.cols << " r=" << r;
      }
    }
  }
}

TEST_P(MatvecTest, MatmulMatchesPerTokenReference) {
  std::mt19937 rng(555);
  ThreadPool pool(2);
  const size_t u = col_unit(GetParam());
  // Column counts below, at and above matmul's 512-column chunk, with and without SIMD tails.
  const std::vector<Shape> shapes{
      {1, u}, {19, 3 * u}, {45, 1024}, {16, 5 * u}, {7, u == 1 ? 1001 : 9 * u}};
  for (const Shape& s : shapes) {
    RandomMatrix m(GetParam(), s.rows, s.cols, rng);
    for (size_t n_tokens : {1, 3, 9, 16, 17}) {  // both matmul paths, odd token tails
      const std::vector<float> X = random_vector(n_tokens * s.cols, rng);
      std::vector<Reference> refs;
      for (size_t t = 0; t < n_tokens; ++t)
        refs.push_back(reference(m.view, X.data() + t * s.cols));
      for (Isa isa : available_isas()) {
        std::vector<float> Y(n_tokens * s.rows, kNaN);
        matmul_isa(isa, m.view, X.data(), n_tokens, Y.data(), pool);
        for (size_t t = 0; t < n_tokens; ++t) {
          for (size_t r = 0; r < s.rows; ++r) {
            ASSERT_NEAR(Y[t * s.rows + r], refs[t].y[r], refs[t].tol[r])
                << isa_name(isa) << " " << s.rows << "x" << s.cols << " tokens=" << n_tokens
                << " t=" << t << " r=" << r;
          }
        }
      }
      // The dispatched matmul agrees with the dispatched per-token matvec to the same bound.
      std::vector<float> Y(n_tokens * s.rows, kNaN), y(s.rows, kNaN);
      matmul(m.view, X.data(), n_tokens, Y.data(), pool);
      for (size_t t = 0; t < n_tokens; ++t) {
        matvec(m.view, X.data() + t * s.cols, y.data(), pool);
        for (size_t r = 0; r < s.rows; ++r) {
          ASSERT_NEAR(Y[t * s.rows + r], y[r], 2 * refs[t].tol[r])
              << "t=" << t << " r=" << r;
        }
      }
    }
  }
}

std::string format_param_name(const ::testing::TestParamInfo<QuantFormat>& info) {
  return format_name(info.param);
}

INSTANTIATE_TEST_SUITE_P(Formats, MatvecTest,
                         ::testing::Values(QuantFormat::f32(), QuantFormat::f16(),
                                           QuantFormat::bf16(), QuantFormat::q8_0(),
                                           QuantFormat::q4(), QuantFormat::affine(4, 32),
                                           QuantFormat::affine(4, 128), QuantFormat::affine(8, 32),
                                           QuantFormat::affine(8, 64), QuantFormat::affine(8, 128)),
                         format_param_name);

TEST(MatvecIsa, NamesAreConsistent) {
  const std::string name = matvec_isa();
  EXPECT_TRUE(name == "scalar" || name == "avx2" || name == "avx512") << name;
  EXPECT_EQ(name, isa_name(active_isa()));
  EXPECT_LE(active_isa(), cpu_isa());
}

TEST(MatvecEdge, EmptyRangeAndZeroRowsAreNoOps) {
  std::mt19937 rng(3);
  RandomMatrix m(QuantFormat::q4(), 4, 64, rng);
  const std::vector<float> x = random_vector(64, rng);
  std::vector<float> y(4, kNaN);
  matvec_rows(m.view, x.data(), y.data(), 2, 2);
  for (float v : y) EXPECT_TRUE(std::isnan(v));
  MatrixView empty = m.view;
  empty.rows = 0;
  ThreadPool pool(2);
  matvec(empty, x.data(), y.data(), pool);
  matmul(empty, x.data(), 1, y.data(), pool);
  for (float v : y) EXPECT_TRUE(std::isnan(v));
}

TEST(MatvecDeath, RejectsIllegalColsAndMissingSections) {
  std::mt19937 rng(4);
  RandomMatrix m(QuantFormat::q4(), 2, 64, rng);
  const std::vector<float> x = random_vector(64, rng);
  std::vector<float> y(2);
  MatrixView bad_cols = m.view;
  bad_cols.cols = 48;  // not a multiple of the group
  EXPECT_DEATH(matvec_rows(bad_cols, x.data(), y.data(), 0, 2), "format_accepts_cols");
  MatrixView no_bias = m.view;
  no_bias.biases = nullptr;
  EXPECT_DEATH(matvec_rows(no_bias, x.data(), y.data(), 0, 2), "biases");
  EXPECT_DEATH(matvec_rows(m.view, x.data(), y.data(), 0, 3), "row_end");
}

}  // namespace
}  // namespace moeflux::cpu
