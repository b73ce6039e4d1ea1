// int8 linear and embedding: every ISA bit-identical to the scalar reference on awkward sizes (K not a multiple of
// 16 or 64, rows not a multiple of 4, one or several tokens, with and without `pre`), the reference equal to the
// integer definition, the embedding exact, clear errors on bad arguments.
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "spinquant/cpu.h"
#include "spinquant/int4.h"
#include "spinquant/int8.h"

using namespace spinquant;

namespace {

struct Table {
  std::vector<int8_t> codes;
  std::vector<float> scales;
  std::vector<int32_t> rowsum;
  int8::Weight w;
};

Table make_table(int64_t N, int64_t K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(-128, 127);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  Table t;
  t.codes.resize(static_cast<size_t>(N * K));
  for (auto& c : t.codes) c = static_cast<int8_t>(code(rng));
  t.scales.resize(static_cast<size_t>(N));
  for (auto& s : t.scales) s = scale(rng);
  t.rowsum.resize(static_cast<size_t>(N));
  int8::row_sums(t.codes.data(), N, K, t.rowsum.data());
  t.w = {t.codes.data(), t.scales.data(), t.rowsum.data(), N, K};
  return t;
}

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<Isa> isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::Dotprod, Isa::I8mm})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

// The definition: activation codes from int4::quantize_activations, the integer dot, the fp32 epilogue.
std::vector<float> definition(const Table& t, const std::vector<float>& x, int64_t M) {
  const int64_t N = t.w.N, K = t.w.K;
  std::vector<float> y(static_cast<size_t>(M * N));
  std::vector<uint8_t> a(static_cast<size_t>(K));
  for (int64_t m = 0; m < M; ++m) {
    float sa;
    int32_t za;
    int4::quantize_activations(x.data() + m * K, K, 8, 1.0f, a.data(), &sa, &za);
    for (int64_t n = 0; n < N; ++n) {
      int64_t dot = 0;
      for (int64_t k = 0; k < K; ++k) dot += (static_cast<int64_t>(a[k]) - za) * t.codes[n * K + k];
      y[m * N + n] = static_cast<float>(dot) * (sa * t.scales[n]);
    }
  }
  return y;
}

void test_linear() {
  for (int64_t K : {1, 15, 17, 64, 100, 576})
    for (int64_t N : {1, 5, 67})
      for (int64_t M : {1, 3}) {
        const Table t = make_table(N, K, static_cast<uint32_t>(K * 131 + N));
        const auto x = randn(static_cast<size_t>(M * K), static_cast<uint32_t>(K + M));
        const auto pre = randn(static_cast<size_t>(K * K), 7);
        for (bool with_pre : {false, true}) {
          std::vector<float> want(static_cast<size_t>(M * N)), got(want.size());
          force_isa(Isa::Scalar);
          int8::linear(t.w, x.data(), M, want.data(), with_pre ? pre.data() : nullptr, 1);
          if (!with_pre) {
            const auto def = definition(t, x, M);
            CHECK(std::memcmp(def.data(), want.data(), want.size() * 4) == 0,
                  "K=%lld N=%lld M=%lld: reference differs from the definition", (long long)K, (long long)N,
                  (long long)M);
          }
          for (Isa isa : isas())
            for (int threads : {1, 2}) {
              force_isa(isa);
              int8::linear(t.w, x.data(), M, got.data(), with_pre ? pre.data() : nullptr, threads);
              CHECK(std::memcmp(got.data(), want.data(), want.size() * 4) == 0,
                    "K=%lld N=%lld M=%lld pre=%d threads=%d: %s differs from the scalar reference", (long long)K,
                    (long long)N, (long long)M, int(with_pre), threads, isa_name(isa));
            }
          reset_isa();
        }
      }
}

void test_embedding() {
  const Table t = make_table(50, 19, 3);
  const std::vector<int64_t> ids = {0, 49, 7, 7};
  std::vector<float> out(ids.size() * 19);
  int8::embedding(t.w, ids.data(), static_cast<int64_t>(ids.size()), out.data(), 2);
  bool exact = true;
  for (size_t i = 0; i < ids.size(); ++i)
    for (int k = 0; k < 19; ++k)
      exact &= out[i * 19 + k] == static_cast<float>(t.codes[ids[i] * 19 + k]) * t.scales[ids[i]];
  CHECK(exact, "embedding differs from codes * scale");
  const int64_t bad = 50;
  bool threw = false;
  try {
    int8::embedding(t.w, &bad, 1, out.data());
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw, "an id outside the vocabulary must throw");
}

void test_errors() {
  Table t = make_table(4, 8, 1);
  std::vector<float> x(8, INFINITY), y(4);
  bool threw = false;
  try {
    int8::linear(t.w, x.data(), 1, y.data());
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw, "infinite activations must throw");
  t.w.rowsum = nullptr;
  threw = false;
  try {
    int8::linear(t.w, x.data(), 1, y.data());
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw, "a weight without row sums must throw");
}

}  // namespace

int main() {
  test_linear();
  test_embedding();
  test_errors();
  if (g_failures) std::fprintf(stderr, "%d failures\n", g_failures);
  return g_failures ? 1 : 0;
}
