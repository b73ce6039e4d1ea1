// Element-wise kernels: every ISA path bit-identical to the scalar reference on awkward sizes (tails shorter
// than a vector, one row, many rows split over threads), the reference close to a double-precision definition,
// clear errors on bad arguments; argmax equal to a plain scan (ties, NaN, infinities) on every ISA.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "spinquant/cpu.h"
#include "spinquant/elementwise.h"

using namespace spinquant;

namespace {

std::vector<Isa> isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::Dotprod, Isa::I8mm})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double max_rel(const std::vector<float>& got, const std::vector<double>& want) {
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::abs(got[i] - want[i]) / (std::abs(want[i]) + 1e-6));
  return worst;
}

// Runs f() under every ISA and checks all outputs equal the scalar reference's; returns the reference.
template <class F>
std::vector<float> all_isas_equal(F f, const char* what, long long size) {
  force_isa(Isa::Scalar);
  const std::vector<float> want = f();
  for (Isa isa : isas()) {
    force_isa(isa);
    CHECK(same_bits(f(), want), "%s (size %lld): %s differs from the scalar reference", what, size, isa_name(isa));
  }
  reset_isa();
  return want;
}

void test_rms_norm() {
  for (int64_t n : {1, 7, 16, 33, 576, 1000})
    for (int64_t rows : {1, 3, 200}) {
      const auto x = randn(rows * n, 1, 3.0f), w = randn(n, 2);
      auto run = [&] {
        std::vector<float> y(x.size());
        rms_norm(x.data(), w.data(), rows, n, 1e-5f, y.data());
        return y;
      };
      const auto got = all_isas_equal(run, "rms_norm", n * 1000 + rows);
      std::vector<double> want(x.size());
      for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < n; ++i) ss += double(x[r * n + i]) * x[r * n + i];
        const double inv = 1.0 / std::sqrt(ss / n + 1e-5);
        for (int64_t i = 0; i < n; ++i) want[r * n + i] = x[r * n + i] * inv * w[i];
      }
      CHECK(max_rel(got, want) < 1e-5, "rms_norm n=%lld rows=%lld: off the definition by %g", (long long)n,
            (long long)rows, max_rel(got, want));
    }
}

void test_silu_mul() {
  for (int64_t f : {0, 1, 5, 17, 1536})
    for (int64_t rows : {1, 40}) {
      auto g = randn(rows * 2 * f, 3, 4.0f);
      if (!g.empty()) g[0] = -200.0f, g[g.size() / 2] = 120.0f;  // exp's clamps: silu(-200) = -0, silu(120) = 120
      auto run = [&] {
        std::vector<float> y(rows * f);
        silu_mul(g.data(), rows, f, y.data());
        return y;
      };
      const auto got = all_isas_equal(run, "silu_mul", f * 1000 + rows);
      std::vector<double> want(rows * f);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < f; ++j) {
          const double gj = g[r * 2 * f + j];
          want[r * f + j] = gj / (1.0 + std::exp(-gj)) * g[r * 2 * f + f + j];
        }
      CHECK(max_rel(got, want) < 1e-5, "silu_mul f=%lld: off the definition by %g", (long long)f, max_rel(got, want));
    }
}

void test_rope() {
  for (int64_t D : {2, 6, 64, 128})
    for (int64_t T : {1, 70}) {
      const int64_t H = 3;
      const auto x = randn(T * H * D, 4), c = randn(T * D, 5), s = randn(T * D, 6);
      auto run = [&] {
        std::vector<float> y(x.size());
        rope(x.data(), c.data(), s.data(), T, H, D, y.data());
        return y;
      };
      const auto got = all_isas_equal(run, "rope", D * 1000 + T);
      std::vector<double> want(x.size());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < D / 2; ++i) {
            const int64_t o = (t * H + h) * D, half = D / 2;
            const double a = x[o + i], b = x[o + i + half];
            want[o + i] = a * c[t * D + i] - b * s[t * D + i];
            want[o + i + half] = b * c[t * D + i + half] + a * s[t * D + i + half];
          }
      double worst = 0;
      for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
      CHECK(worst < 1e-5, "rope D=%lld: off the definition by %g", (long long)D, worst);
    }
}

void test_add() {
  for (int64_t n : {0, 1, 15, 576, 100000}) {
    const auto a = randn(n, 7), b = randn(n, 8);
    auto run = [&] {
      std::vector<float> y(n);
      add(a.data(), b.data(), n, y.data());
      return y;
    };
    const auto got = all_isas_equal(run, "add", n);
    bool ok = true;
    for (int64_t i = 0; i < n; ++i) ok &= got[i] == a[i] + b[i];
    CHECK(ok, "add n=%lld: not a + b", (long long)n);
  }
}

// The scan argmax must match: the first of equal maxima wins, NaNs never do.
int64_t scan_argmax(const std::vector<float>& x) {
  int64_t best = 0;
  for (size_t i = 1; i < x.size(); ++i)
    if (x[i] > x[best]) best = static_cast<int64_t>(i);
  return best;
}

void test_argmax() {
  const float inf = INFINITY, nan = NAN;
  for (int64_t n : {1, 2, 15, 17, 1023, 1024, 1025, 3000, 49152}) {
    std::vector<std::vector<float>> cases;
    cases.push_back(randn(n, static_cast<uint32_t>(n)));
    auto tied = cases[0];  // the maximum twice: in the last block, then again earlier in another block
    const float top = *std::max_element(tied.begin(), tied.end()) + 1.0f;
    tied[n - 1] = top;
    tied[n / 3] = top;
    cases.push_back(tied);
    auto zeros = std::vector<float>(n, -1.0f);  // -0 before +0: equal maxima
    zeros[n / 2] = -0.0f;
    zeros[n - 1] = 0.0f;
    cases.push_back(zeros);
    for (float special : {nan, inf, -inf}) {
      for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
        auto x = cases[0];
        x[at] = special;
        cases.push_back(x);
      }
    }
    cases.push_back(std::vector<float>(n, nan));
    cases.push_back(std::vector<float>(n, -inf));
    for (size_t c = 0; c < cases.size(); ++c) {
      const int64_t want = scan_argmax(cases[c]);
      for (Isa isa : isas()) {
        force_isa(isa);
        const int64_t got = argmax(cases[c].data(), n);
        CHECK(got == want, "argmax n=%lld case %zu on %s: %lld, the scan finds %lld", (long long)n, c, isa_name(isa),
              (long long)got, (long long)want);
      }
      reset_isa();
    }
  }
}

void test_errors() {
  float x[2] = {1, 2}, y[2];
  auto throws = [](auto f) {
    try {
      f();
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  CHECK(throws([&] { rms_norm(x, x, 1, 0, 1e-5f, y); }), "rms_norm with n = 0 throws");
  CHECK(throws([&] { rope(x, x, x, 1, 1, 3, y); }), "rope with an odd head_dim throws");
  CHECK(throws([&] { silu_mul(x, -1, 1, y); }), "silu_mul with negative rows throws");
  CHECK(throws([&] { argmax(x, 0); }), "argmax of nothing throws");
}

}  // namespace

int main() {
  test_rms_norm();
  test_silu_mul();
  test_rope();
  test_add();
  test_argmax();
  test_errors();
  std::printf("%s\n", g_failures == 0 ? "test_elementwise: all passed" : "test_elementwise: FAILED");
  return g_failures == 0 ? 0 : 1;
}
