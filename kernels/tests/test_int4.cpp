// int4 GEMM/GEMV tests: prepack/unpack round trip, activation quantization against the written
// convention, every supported ISA bit-identical to the scalar reference on the quantized paths,
// and all of them close to an independent double-precision computation from the storage format.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "../src/int4_kernels.h"
#include "spinquant/cpu.h"
#include "spinquant/int4.h"

using namespace spinquant;
using spinquant::int4::detail::float_to_half;
using spinquant::int4::detail::half_to_float;

namespace {

int g_failures = 0;

void expect(bool ok, const char* what, long a = 0, long b = 0) {
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "FAIL: %s (%ld, %ld)\n", what, a, b);
  }
}

struct Case {
  int64_t M, N, K, group;
  bool asym, bias;
};

struct Weights {
  std::vector<uint8_t> q, z;
  std::vector<uint16_t> s;
  std::vector<float> bias;
  int64_t G;
};

Weights make_weights(const Case& c, std::mt19937& rng) {
  Weights w;
  w.G = (c.K + c.group - 1) / c.group;
  const int64_t row_bytes = (c.K + 1) / 2;
  std::uniform_int_distribution<int> code(0, 15);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f), bias(-1.0f, 1.0f);
  w.q.assign(c.N * row_bytes, 0);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.K; ++k)
      w.q[n * row_bytes + k / 2] |= static_cast<uint8_t>(code(rng) << (4 * (k & 1)));
  for (int64_t i = 0; i < c.N * w.G; ++i) w.s.push_back(float_to_half(scale(rng)));
  if (c.asym)
    for (int64_t i = 0; i < c.N * w.G; ++i) w.z.push_back(static_cast<uint8_t>(code(rng)));
  if (c.bias)
    for (int64_t n = 0; n < c.N; ++n) w.bias.push_back(bias(rng));
  return w;
}

// Weight of row n, input k straight from the storage format.
double storage_weight(const Case& c, const Weights& w, int64_t n, int64_t k) {
  const uint8_t byte = w.q[n * ((c.K + 1) / 2) + k / 2];
  const int q = (k & 1) ? byte >> 4 : byte & 15;
  const int64_t g = k / c.group;
  const int z = c.asym ? w.z[n * w.G + g] : 8;
  return static_cast<double>(q - z) * half_to_float(w.s[n * w.G + g]);
}

// The activation convention, written out independently of the library.
void quantize_spec(const float* x, int64_t K, int bits, float clip, std::vector<int>& q, float& scale, int& zero) {
  float mx = 0.0f, mn = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    mx = std::max(mx, x[k]);
    mn = std::min(mn, x[k]);
  }
  // volatile: round the products before subtracting, as written (no contraction into an FMA)
  const volatile float xmax = mx * clip, xmin = mn * clip;
  scale = (xmax - xmin) / static_cast<float>((1 << bits) - 1);
  if (scale == 0.0f) scale = 1.0f;
  zero = static_cast<int>(std::nearbyint(-xmin / scale));
  q.resize(K);
  for (int64_t k = 0; k < K; ++k) {
    const long v = std::lrint(std::nearbyint(x[k] / scale)) + zero;
    q[k] = static_cast<int>(std::min<long>(std::max<long>(v, 0), (1 << bits) - 1));
  }
}

// Double-precision y and a per-output error budget.
void reference(const Case& c, const Weights& w, const std::vector<float>& x, int bits, float clip,
               std::vector<double>& y, std::vector<double>& budget) {
  y.assign(c.M * c.N, 0.0);
  budget.assign(c.M * c.N, 0.0);
  std::vector<double> xd(c.K);
  for (int64_t m = 0; m < c.M; ++m) {
    const float* row = &x[m * c.K];
    if (bits == 16) {
      for (int64_t k = 0; k < c.K; ++k) xd[k] = row[k];
    } else {
      std::vector<int> q;
      float scale;
      int zero;
      quantize_spec(row, c.K, bits, clip, q, scale, zero);
      for (int64_t k = 0; k < c.K; ++k) xd[k] = static_cast<double>(q[k] - zero) * scale;
    }
    for (int64_t n = 0; n < c.N; ++n) {
      double acc = c.bias ? w.bias[n] : 0.0, mag = std::fabs(acc);
      for (int64_t k = 0; k < c.K; ++k) {
        const double wk = storage_weight(c, w, n, k);
        acc += xd[k] * wk;
        mag += std::fabs(xd[k] * wk) + std::fabs(row[k] * wk);
      }
      y[m * c.N + n] = acc;
      budget[m * c.N + n] = 1e-5 * mag + 1e-6;
    }
  }
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::Dotprod, Isa::I8mm})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

void test_roundtrip(const Case& c, const Weights& w, const int4::PackedInt4& p) {
  std::vector<uint8_t> q(w.q.size()), z(w.z.size());
  std::vector<uint16_t> s(w.s.size());
  int4::unpack(p, q.data(), s.data(), c.asym ? z.data() : nullptr);
  expect(q == w.q && s == w.s && z == w.z, "unpack(prepack(w)) == w", c.N, c.K);
  std::vector<float> deq(c.N * c.K);
  int4::dequantize(p, deq.data());
  bool same = true;
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.K; ++k) same &= deq[n * c.K + k] == static_cast<float>(storage_weight(c, w, n, k));
  expect(same, "dequantize matches the storage format", c.N, c.K);
}

void test_quantizer(const std::vector<float>& x, int64_t K, int bits, float clip) {
  std::vector<int> want;
  float want_scale;
  int want_zero;
  quantize_spec(x.data(), K, bits, clip, want, want_scale, want_zero);
  std::vector<uint8_t> got(K);
  float scale;
  int32_t zero;
  int4::quantize_activations(x.data(), K, bits, clip, got.data(), &scale, &zero);
  bool same = scale == want_scale && zero == want_zero;
  for (int64_t k = 0; k < K; ++k) same &= got[k] == want[k];
  expect(same, "quantize_activations follows the convention", K, bits);
}

void run_case(const Case& c, std::mt19937& rng) {
  const Weights w = make_weights(c, rng);
  const int4::PackedInt4 p = int4::prepack(w.q.data(), w.s.data(), c.asym ? w.z.data() : nullptr, c.N, c.K, c.group);
  test_roundtrip(c, w, p);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(c.M * c.K);
  for (auto& v : x) v = normal(rng);
  if (!x.empty()) x[0] = 6.0f;  // an outlier, as real activations have

  for (int bits : {4, 8, 16}) {
    const float clip = bits == 4 ? 0.9f : 1.0f;
    std::vector<double> yref, budget;
    reference(c, w, x, bits, clip, yref, budget);
    std::vector<float> scalar_y;
    for (Isa isa : supported_isas()) {
      force_isa(isa);
      if (bits != 16)
        for (int64_t m = 0; m < c.M; ++m) test_quantizer({x.begin() + m * c.K, x.begin() + (m + 1) * c.K}, c.K, bits, clip);
      int4::LinearParams params;
      params.act_bits = bits;
      params.act_clip = clip;
      params.bias = c.bias ? w.bias.data() : nullptr;
      params.threads = (c.N % 2) ? 1 : 0;
      std::vector<float> y(c.M * c.N, -1.0f);
      int4::linear(p, x.data(), c.M, y.data(), params);
      bool close = true;
      for (size_t i = 0; i < y.size(); ++i) close &= std::fabs(y[i] - yref[i]) <= budget[i];
      expect(close, isa_name(isa), c.K, bits);
      params.next = &p;  // idle workers prefetch a weight meanwhile: the result may not change
      std::vector<float> y_next(c.M * c.N, -1.0f);
      int4::linear(p, x.data(), c.M, y_next.data(), params);
      expect(std::memcmp(y.data(), y_next.data(), y.size() * sizeof(float)) == 0, "same result with next set", c.K);
      // Row blocks are independent: any split of them (balanced claims for one token) gives the same bits; float
      // prefill tiles tokens by the split, so its rounding may differ.
      for (int threads : {1, 2, 3}) {
        if (c.M > 1 && bits == 16) break;
        params.threads = threads;
        std::vector<float> y_t(c.M * c.N, -1.0f);
        int4::linear(p, x.data(), c.M, y_t.data(), params);
        expect(std::memcmp(y.data(), y_t.data(), y.size() * sizeof(float)) == 0, "same result on any thread count",
               c.K);
      }
      if (isa == Isa::Scalar) {
        scalar_y = y;
      } else if (bits != 16) {
        expect(std::memcmp(y.data(), scalar_y.data(), y.size() * sizeof(float)) == 0,
               "integer path bit-identical to scalar", c.K, static_cast<long>(isa));
      }
    }
    reset_isa();
  }
}

void test_errors() {
  const uint8_t q[2] = {0, 0};
  const uint16_t s[1] = {float_to_half(1.0f)};
  const uint8_t bad_zero[1] = {16};
  bool threw = false;
  try {
    int4::prepack(q, s, bad_zero, 1, 4, 32);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, "zero point > 15 is rejected");
  const int4::PackedInt4 p = int4::prepack(q, s, nullptr, 1, 4, 32);
  float x[4] = {1, 2, 3, 4}, y[1];
  for (int bits : {1, 9, 12}) {
    threw = false;
    try {
      int4::LinearParams params;
      params.act_bits = bits;
      int4::linear(p, x, 1, y, params);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    expect(threw, "bad act_bits is rejected", bits);
  }
  x[2] = INFINITY;
  threw = false;
  try {
    int4::linear(p, x, 1, y, int4::LinearParams{});
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, "inf activations are rejected");
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const Case cases[] = {
      {1, 1, 1, 32, false, false},     {1, 17, 33, 32, true, true},      {3, 16, 64, 32, false, false},
      {37, 40, 100, 32, true, true},   {5, 33, 4096, 128, false, true},  {2, 7, 77, 77, true, false},
      {1, 300, 576, 64, false, true},  {7, 24, 31, 8, true, true},       {37, 1, 4096, 32, false, false},
      {1, 1000, 64, 32, true, false},  {9, 50, 200, 200, false, true},   {6, 20, 96, 32, false, true},
      // one token with groups of an odd number of 8-input chunks (the decode kernels' peeled chunk): 3 a group,
      // then a short last group of 1; symmetric and asymmetric; and uniform groups of 16 (the unrolled decode
      // loops of 32, 64 and 128 are in the cases above)
      {1, 48, 40, 32, false, false},   {1, 33, 72, 24, true, false},     {1, 64, 104, 24, false, true},
      {1, 40, 48, 16, false, false},   {1, 17, 96, 16, true, true},
      // prefill tiles of 8 tokens and every remainder: whole tiles, 8 + 5, 16 + 7; with N tails (17, 33, 50), short
      // last groups (200 = 8 x 24 + 8) and padded ones (77)
      {8, 17, 64, 32, false, true},    {13, 33, 96, 32, true, false},    {23, 48, 200, 24, false, false},
      {16, 20, 72, 16, true, true},    {11, 50, 77, 77, false, true},    {30, 31, 576, 32, true, true},
  };
  for (const Case& c : cases) run_case(c, rng);
  test_errors();
  std::printf("automatic choice: %s; tested:", isa_name(active_isa()));
  for (Isa isa : supported_isas()) std::printf(" %s", isa_name(isa));
  std::printf("\n%s\n", g_failures == 0 ? "test_int4: all passed" : "test_int4: FAILED");
  return g_failures == 0 ? 0 : 1;
}
