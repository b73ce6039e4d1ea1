// Fast Walsh-Hadamard transform: every ISA path bit-identical to the scalar reference, the reference equal
// to the dense definition kron(H_K, H_m) / sqrt(n), orthonormal at every size, clear errors on bad input.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "spinquant/cpu.h"
#include "spinquant/hadamard.h"

using namespace spinquant;

namespace {

using Mat = std::vector<int8_t>;

int legendre(int64_t a, int64_t q) {  // quadratic character of a mod prime q
  a = ((a % q) + q) % q;
  if (a == 0) return 0;
  int64_t r = 1, base = a, e = (q - 1) / 2;
  for (; e > 0; e >>= 1, base = base * base % q)
    if (e & 1) r = r * base % q;
  return r == 1 ? 1 : -1;
}

// Paley I (q prime, q = 3 mod 4): K = q + 1, H = I + [[0, 1^T], [-1, Q]].
Mat paley1(int64_t q) {
  const int64_t K = q + 1;
  Mat h(K * K);
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) {
      int s;
      if (i == 0) s = j == 0 ? 0 : 1;
      else if (j == 0) s = -1;
      else s = legendre(j - i, q);
      h[i * K + j] = static_cast<int8_t>(s + (i == j ? 1 : 0));
    }
  return h;
}

// Paley II (q prime, q = 1 mod 4): K = 2(q + 1), from the symmetric conference matrix C = [[0, 1^T], [1, Q]]:
// each 0 becomes [[1, -1], [-1, -1]], each +-1 becomes +-[[1, 1], [1, -1]].
Mat paley2(int64_t q) {
  const int64_t c = q + 1, K = 2 * c;
  Mat h(K * K);
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) {
      int s;
      if (i == j) s = 0;
      else if (i == 0 || j == 0) s = 1;
      else s = legendre(j - i, q);
      const int blk[2][2] = {{s == 0 ? 1 : s, s == 0 ? -1 : s}, {s == 0 ? -1 : s, s == 0 ? -1 : -s}};
      for (int u = 0; u < 2; ++u)
        for (int v = 0; v < 2; ++v) h[(2 * i + u) * K + 2 * j + v] = static_cast<int8_t>(blk[u][v]);
    }
  return h;
}

Mat kron2(const Mat& a, int64_t K) {  // kron(H_2, A)
  Mat h(4 * K * K);
  for (int u = 0; u < 2; ++u)
    for (int v = 0; v < 2; ++v)
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < K; ++j)
          h[(u * K + i) * 2 * K + v * K + j] = static_cast<int8_t>((u & v ? -1 : 1) * a[i * K + j]);
  return h;
}

struct Case {
  int64_t K;
  Mat h;
};

std::vector<Case> test_matrices() {
  std::vector<Case> out;
  out.push_back({1, {}});
  for (int64_t q : {11, 19, 43, 59, 107, 139}) out.push_back({q + 1, paley1(q)});  // 12 20 44 60 108 140
  for (int64_t q : {13, 17}) out.push_back({2 * (q + 1), paley2(q)});              // 28 36
  out.push_back({40, kron2(paley1(19), 20)});
  return out;
}

std::vector<float> random_rows(int64_t rows, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(rows * n);
  for (auto& v : x) v = d(rng);
  return x;
}

// Dense definition in double: H_n[i][j] = H_K[a_i][a_j] * (-1)^popcount(b_i & b_j) / sqrt(n).
std::vector<double> dense(const std::vector<float>& x, int64_t n, const Case& c) {
  const int64_t m = n / c.K;
  std::vector<double> y(n, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double acc = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      int s = __builtin_popcountll(static_cast<uint64_t>((i % m) & (j % m))) & 1 ? -1 : 1;
      if (c.K > 1) s *= c.h[(i / m) * c.K + j / m];
      acc += s * static_cast<double>(x[j]);
    }
    y[i] = acc / std::sqrt(static_cast<double>(n));
  }
  return y;
}

std::vector<Isa> isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::Dotprod, Isa::I8mm})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

double norm(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return std::sqrt(s);
}

void check_size(const Case& c, int64_t n, uint32_t seed) {
  const int64_t rows = n <= 4096 ? 3 : 1;
  const std::vector<float> x = random_rows(rows, n, seed);
  const HadamardTransform t(n, c.K > 1 ? c.h.data() : nullptr, c.K);
  force_isa(Isa::Scalar);
  std::vector<float> ref = x;
  t.apply(ref.data(), rows, 1);
  if (n <= 2048) {  // the reference against the dense definition (first row)
    const std::vector<double> y = dense(x, n, c);
    double err = 0, mag = 0;
    for (int64_t i = 0; i < n; ++i) {
      err = std::max(err, std::fabs(y[i] - ref[i]));
      mag = std::max(mag, std::fabs(y[i]));
    }
    CHECK(err <= 1e-5 * mag + 1e-6, "n=%lld K=%lld: reference vs dense max err %g (max |y| %g)", (long long)n,
          (long long)c.K, err, mag);
  }
  for (int64_t r = 0; r < rows; ++r) {  // orthonormal: norm preserved
    const double n0 = norm(x.data() + r * n, n), n1 = norm(ref.data() + r * n, n);
    CHECK(std::fabs(n0 - n1) <= 1e-5 * n0, "n=%lld K=%lld: norm %g -> %g", (long long)n, (long long)c.K, n0, n1);
  }
  if (c.K == 1) {  // Sylvester matrices are symmetric: applying twice is the identity
    std::vector<float> twice = ref;
    t.apply(twice.data(), rows, 1);
    double err = 0;
    for (size_t i = 0; i < x.size(); ++i) err = std::max(err, static_cast<double>(std::fabs(twice[i] - x[i])));
    CHECK(err <= 1e-5, "n=%lld: H(H(x)) != x, max err %g", (long long)n, err);
  }
  for (Isa isa : isas()) {
    force_isa(isa);
    std::vector<float> y = x;
    t.apply(y.data(), rows, 1);
    CHECK(std::memcmp(y.data(), ref.data(), sizeof(float) * y.size()) == 0, "n=%lld K=%lld isa=%s differs from scalar",
          (long long)n, (long long)c.K, isa_name(isa));
  }
  reset_isa();
}

void expect_invalid(int64_t n, const int8_t* hk, int64_t K, const char* what) {
  bool thrown = false;
  try {
    HadamardTransform(n, hk, K);
  } catch (const std::invalid_argument& e) {
    thrown = true;
    CHECK(std::strstr(e.what(), "hadamard") != nullptr, "%s: message lacks context: %s", what, e.what());
  }
  CHECK(thrown, "%s: no std::invalid_argument", what);
}

void check_errors() {
  const Mat h12 = paley1(11);
  expect_invalid(0, nullptr, 1, "n = 0");
  expect_invalid(-8, nullptr, 1, "n < 0");
  expect_invalid(24, nullptr, 1, "24 is not a power of two");
  expect_invalid(1536, nullptr, 12, "K = 12 without its matrix");
  expect_invalid(100, h12.data(), 12, "100 is not 12 * 2^k");
  expect_invalid(12 * 48, h12.data(), 12, "48 is not a power of two");
  Mat bad = h12;
  bad[5] = static_cast<int8_t>(-bad[5]);
  expect_invalid(1536, bad.data(), 12, "not orthogonal");
  bad = h12;
  bad[0] = 2;
  expect_invalid(1536, bad.data(), 12, "entry 2");
  expect_invalid(1536, h12.data(), 0, "K = 0");
  CHECK(is_hadamard_matrix(h12.data(), 12), "Paley I 12 should be Hadamard");
}

void check_threads() {
  const Mat h12 = paley1(11);
  const int64_t n = 1536, rows = 37;
  const HadamardTransform t(n, h12.data(), 12);
  std::vector<float> a = random_rows(rows, n, 7), b = a;
  t.apply(a.data(), rows, 1);
  t.apply(b.data(), rows, 3);
  CHECK(std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0, "3 threads differ from 1");
}

void check_f16() {
  for (uint32_t h = 0; h < 65536; ++h) {  // every half survives the round trip (NaNs stay NaN)
    const float f = half_to_float(static_cast<uint16_t>(h));
    const uint16_t back = float_to_half(f);
    if (std::isnan(f))
      CHECK((back & 0x7C00) == 0x7C00 && (back & 0x3FF) != 0, "NaN 0x%04x -> 0x%04x", h, back);
    else
      CHECK(back == h, "half 0x%04x -> %g -> 0x%04x", h, f, back);
  }
  const struct {
    float f;
    uint16_t h;
  } cases[] = {{1.0f + 0x1p-11f, 0x3C00}, {1.0f + 3 * 0x1p-11f, 0x3C02}, {1.0f + 0x1p-11f + 0x1p-20f, 0x3C01},
               {65504.0f, 0x7BFF},        {65519.99f, 0x7BFF},            {65520.0f, 0x7C00},
               {-1e9f, 0xFC00},           {0x1p-25f, 0x0000},             {3 * 0x1p-25f, 0x0002},
               {0x1p-14f - 0x1p-26f, 0x0400}, {-0.0f, 0x8000},            {2047.5f, 0x6800}};
  for (const auto& c : cases)
    CHECK(float_to_half(c.f) == c.h, "float_to_half(%a) = 0x%04x, expected 0x%04x", c.f, float_to_half(c.f), c.h);
  // Every ISA's converters agree with the scalar ones bit for bit (NaN payloads aside).
  std::vector<uint16_t> all(65536), back(65536);
  std::vector<float> wide(65536), ref_wide(65536);
  for (uint32_t h = 0; h < 65536; ++h) all[h] = static_cast<uint16_t>(h);
  detail::widen_f16_ref(all.data(), ref_wide.data(), 65536);
  for (const auto& c : cases) ref_wide.push_back(c.f);
  for (Isa isa : isas()) {
    force_isa(isa);
    const detail::HalfConverters cvt = detail::half_converters();
    cvt.widen(all.data(), wide.data(), 65536);
    back.resize(ref_wide.size());
    cvt.narrow(ref_wide.data(), back.data(), static_cast<int64_t>(ref_wide.size()));
    int bad = 0;
    for (size_t i = 0; i < 65536; ++i)
      if (!std::isnan(ref_wide[i]) && std::memcmp(&wide[i], &ref_wide[i], 4) != 0) ++bad;
    for (size_t i = 0; i < ref_wide.size(); ++i)
      if (!std::isnan(ref_wide[i]) && back[i] != float_to_half(ref_wide[i])) ++bad;
    CHECK(bad == 0, "isa=%s: %d fp16 conversions differ from the scalar ones", isa_name(isa), bad);
  }
  reset_isa();
  // apply_f16 == widen, fp32 transform, round back -- on every ISA.
  const Mat h12 = paley1(11);
  for (int64_t n : {64, 1536}) {
    const HadamardTransform t(n, n == 1536 ? h12.data() : nullptr, n == 1536 ? 12 : 1);
    const std::vector<float> x = random_rows(3, n, 99);
    std::vector<uint16_t> x16(x.size());
    std::vector<float> want(x.size());
    for (size_t i = 0; i < x.size(); ++i) want[i] = half_to_float(x16[i] = float_to_half(x[i]));
    force_isa(Isa::Scalar);
    t.apply(want.data(), 3, 1);
    for (Isa isa : isas()) {
      force_isa(isa);
      std::vector<uint16_t> y = x16;
      t.apply_f16(y.data(), 3, 1);
      bool same = true;
      for (size_t i = 0; i < y.size(); ++i) same = same && y[i] == float_to_half(want[i]);
      CHECK(same, "apply_f16 n=%lld isa=%s differs from the rounded fp32 transform", (long long)n, isa_name(isa));
    }
  }
  reset_isa();
}

}  // namespace

int main() {
  const std::vector<Case> cases = test_matrices();
  for (const Case& c : cases)
    CHECK(c.K == 1 || is_hadamard_matrix(c.h.data(), c.K), "test matrix K=%lld is not Hadamard", (long long)c.K);
  uint32_t seed = 1;
  for (int64_t m = 1; m <= (int64_t{1} << 15); m *= 2) check_size(cases[0], m, seed++);
  for (size_t i = 1; i < cases.size(); ++i)
    for (int64_t m = 1; cases[i].K * m <= 16384; m *= 2) check_size(cases[i], cases[i].K * m, seed++);
  check_errors();
  check_threads();
  check_f16();
  if (g_failures) {
    std::fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("test_hadamard: ok (ISAs:");
  for (Isa isa : isas()) std::printf(" %s", isa_name(isa));
  std::printf(")\n");
  return 0;
}
