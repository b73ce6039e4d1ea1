// KV-cache attention: quantized cache codes / scales / zeros bit-identical to an independent implementation of the
// quantization convention, outputs of every ISA path close to a double-precision reference computed here from
// those codes, causal GQA over prefill chunks and decode steps, R3 rotation, clear errors on bad input.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "spinquant/attention.h"
#include "check.h"
#include "spinquant/cpu.h"
#include "spinquant/hadamard.h"

using namespace spinquant;

namespace {

struct Shape {
  int64_t n_heads, n_kv, hd, group;
  int bits;
  bool rotate;
};

std::vector<Isa> isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::Dotprod, Isa::I8mm})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

std::vector<float> randn(size_t n, std::mt19937& rng, float stddev = 1.0f) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

// The convention, written independently: codes (unpacked), scale, zero of one group.
void quantize(const float* x, int64_t g, int bits, std::vector<int>& codes, float& scale, float& zero) {
  const float qmax = static_cast<float>((1 << bits) - 1);
  float hi = 0.0f, lo = 0.0f;
  for (int64_t i = 0; i < g; ++i) {
    if (x[i] > hi) hi = x[i];
    if (x[i] < lo) lo = x[i];
  }
  scale = (hi - lo) / qmax;
  if (scale == 0.0f) scale = 1.0f;
  zero = std::nearbyint(-lo / scale);
  codes.resize(g);
  for (int64_t i = 0; i < g; ++i)
    codes[i] = static_cast<int>(std::fmin(std::fmax(std::nearbyint(x[i] / scale) + zero, 0.0f), qmax));
}

// Host-side model of the cache: dequantized rows in double [n_kv][pos][hd], filled as the test appends.
struct Model {
  Shape s;
  std::vector<std::vector<std::vector<double>>> k, v;  // [head][pos][d]
};

// Checks that the cache's stored row (head, pos) equals the convention applied to x; records the dequantized row.
void check_row(const QuantKVCache& c, int which, int64_t head, int64_t pos, const float* x,
               std::vector<double>& deq) {
  const int64_t hd = c.head_dim(), g = c.group(), row = head * c.max_seq_len() + pos;
  const uint8_t* bytes = c.codes(which) + row * c.row_bytes();
  deq.assign(hd, 0.0);
  for (int64_t gi = 0; gi < c.groups(); ++gi) {
    std::vector<int> codes;
    float scale, zero;
    quantize(x + gi * g, g, c.bits(), codes, scale, zero);
    const float got_s = c.scales(which)[row * c.groups() + gi], got_z = c.zeros(which)[row * c.groups() + gi];
    CHECK(std::memcmp(&got_s, &scale, 4) == 0 && std::memcmp(&got_z, &zero, 4) == 0,
          "scale/zero of head %lld pos %lld group %lld: %g/%g vs %g/%g", (long long)head, (long long)pos,
          (long long)gi, got_s, got_z, scale, zero);
    for (int64_t i = 0; i < g; ++i) {
      const int64_t d = gi * g + i;
      const int got = c.bits() == 8 ? bytes[d] : (bytes[d / 2] >> (4 * (d % 2))) & 0xF;
      CHECK(got == codes[i], "code head %lld pos %lld d %lld: %d vs %d", (long long)head, (long long)pos,
            (long long)d, got, codes[i]);
      deq[d] = (static_cast<double>(codes[i]) - zero) * static_cast<double>(scale);
    }
  }
}

void append_checked(QuantKVCache& c, Model& m, const std::vector<float>& k, const std::vector<float>& v, int64_t T,
                    int64_t start) {
  c.append(k.data(), v.data(), T, start);
  const int64_t hd = m.s.hd;
  std::vector<float> kr = k;
  if (m.s.rotate) HadamardTransform(hd, nullptr, 1).apply(kr.data(), T * m.s.n_kv, 1);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < m.s.n_kv; ++h) {
      const int64_t off = (t * m.s.n_kv + h) * hd, pos = start + t;
      m.k[h].resize(pos + 1);
      m.v[h].resize(pos + 1);
      check_row(c, 0, h, pos, kr.data() + off, m.k[h][pos]);
      check_row(c, 1, h, pos, v.data() + off, m.v[h][pos]);
    }
}

// Double reference: q rotated by the dense Sylvester matrix when rotate, causal softmax attention.
std::vector<double> reference(const Model& m, const std::vector<float>& q, int64_t T, int64_t start) {
  const Shape& s = m.s;
  const int64_t hd = s.hd, r = s.n_heads / s.n_kv;
  std::vector<double> out(T * s.n_heads * hd);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < s.n_heads; ++h) {
      const float* qh = q.data() + (t * s.n_heads + h) * hd;
      std::vector<double> qd(qh, qh + hd);
      if (s.rotate)
        for (int64_t i = 0; i < hd; ++i) {
          double acc = 0;
          for (int64_t j = 0; j < hd; ++j) acc += (__builtin_popcountll(i & j) & 1 ? -1.0 : 1.0) * qh[j];
          qd[i] = acc / std::sqrt(static_cast<double>(hd));
        }
      const auto& K = m.k[h / r];
      const auto& V = m.v[h / r];
      const int64_t len = start + t + 1;
      std::vector<double> sc(len);
      for (int64_t j = 0; j < len; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < hd; ++d) dot += qd[d] * K[j][d];
        sc[j] = dot / std::sqrt(static_cast<double>(hd));
      }
      const double mx = *std::max_element(sc.begin(), sc.end());
      double sum = 0;
      for (auto& x : sc) sum += (x = std::exp(x - mx));
      for (int64_t d = 0; d < hd; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < len; ++j) acc += sc[j] * V[j][d];
        out[(t * s.n_heads + h) * hd + d] = acc / sum;
      }
    }
  return out;
}

void compare(const std::vector<float>& got, const std::vector<double>& want, const char* what, const Shape& s,
             int64_t start, int64_t T, double tol) {
  double err = 0, mag = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, std::fabs(got[i] - want[i]));
    mag = std::max(mag, std::fabs(want[i]));
  }
  CHECK(err <= tol * (mag + 1e-3), "%s: heads %lld/%lld hd %lld bits %d group %lld rotate %d start %lld T %lld: "
        "max err %g (max |out| %g)", what, (long long)s.n_heads, (long long)s.n_kv, (long long)s.hd, s.bits,
        (long long)s.group, s.rotate, (long long)start, (long long)T, err, mag);
}

// Appends and attends in steps of T tokens (1: a decode step) with every ISA and 1 or 2 threads.
void run_shape(const Shape& s, uint32_t seed, const std::vector<int64_t>& steps = {1, 6, 1, 7, 1, 13, 1}) {
  std::mt19937 rng(seed);
  int64_t max_seq = 0;
  for (int64_t T : steps) max_seq += T;
  QuantKVCache cache(s.n_kv, s.hd, max_seq, s.bits, s.group, s.rotate);
  using Rows = std::vector<std::vector<std::vector<double>>>;
  Model m{s, Rows(s.n_kv), Rows(s.n_kv)};
  // Default steps: a single first token (context 1), a prefill chunk, decode steps, an odd chunk, more decode.
  int64_t pos = 0;
  for (int64_t T : steps) {
    const auto k = randn(T * s.n_kv * s.hd, rng), v = randn(T * s.n_kv * s.hd, rng);
    const auto q = randn(T * s.n_heads * s.hd, rng, 2.0f);
    append_checked(cache, m, k, v, T, pos);
    const std::vector<double> want = reference(m, q, T, pos);
    std::vector<float> scalar;
    for (Isa isa : isas()) {
      force_isa(isa);
      std::vector<float> out(q.size(), -1.0f);
      quant_kv_attention(cache, q.data(), T, s.n_heads, pos, out.data(), 0.0f, 1);
      compare(out, want, isa_name(isa), s, pos, T, 2e-5);
      if (isa == Isa::Scalar) scalar = out;
      std::vector<double> sd(scalar.begin(), scalar.end());
      compare(out, sd, "vs scalar", s, pos, T, 2e-5);
      std::vector<float> out2(q.size());  // 2 threads: the same numbers, or close ones where rows split in chunks
      quant_kv_attention(cache, q.data(), T, s.n_heads, pos, out2.data(), 0.0f, 2);
      compare(out2, want, "threads=2", s, pos, T, 2e-5);
      // Under 256 rows no chunk splits them: 2 threads share out query heads, each computed as on 1 thread.
      CHECK(pos >= 255 || out2 == out, "threads=2 not bit-identical to 1 thread at pos %lld", (long long)pos);
    }
    reset_isa();
    pos += T;
  }
  CHECK(cache.length() == pos, "length %lld, expected %lld", (long long)cache.length(), (long long)pos);
}

// Float caches through attention(): every ISA close to a double reference and to the scalar path; positions
// need not be consecutive (a query sees rows 0 .. pos[t] of the [max_seq][head_dim] cache).
void run_float(int64_t n_heads, int64_t n_kv, int64_t hd, uint32_t seed,
               const std::vector<std::vector<int64_t>>& positions = {{0}, {5}, {39}, {3, 4, 5, 6, 7}, {17, 2, 30}}) {
  std::mt19937 rng(seed);
  int64_t max_seq = 0;
  for (const auto& pos : positions) max_seq = std::max(max_seq, *std::max_element(pos.begin(), pos.end()) + 1);
  const int64_t r = n_heads / n_kv;
  const auto kc = randn(n_kv * max_seq * hd, rng), vc = randn(n_kv * max_seq * hd, rng);
  std::vector<KVHeadView> heads;
  for (int64_t h = 0; h < n_kv; ++h)
    heads.push_back(float_head_view(kc.data() + h * max_seq * hd, vc.data() + h * max_seq * hd, hd));
  for (const std::vector<int64_t>& pos : positions) {
    const int64_t T = static_cast<int64_t>(pos.size());
    const auto q = randn(T * n_heads * hd, rng, 2.0f);
    std::vector<double> want(q.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < n_heads; ++h) {
        const float* qh = q.data() + (t * n_heads + h) * hd;
        const float* K = kc.data() + (h / r) * max_seq * hd;
        const float* V = vc.data() + (h / r) * max_seq * hd;
        std::vector<double> sc(pos[t] + 1);
        for (int64_t j = 0; j <= pos[t]; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < hd; ++d) dot += static_cast<double>(qh[d]) * K[j * hd + d];
          sc[j] = dot / std::sqrt(static_cast<double>(hd));
        }
        const double mx = *std::max_element(sc.begin(), sc.end());
        double sum = 0;
        for (auto& x : sc) sum += (x = std::exp(x - mx));
        for (int64_t d = 0; d < hd; ++d) {
          double acc = 0;
          for (int64_t j = 0; j <= pos[t]; ++j) acc += sc[j] * V[j * hd + d];
          want[(t * n_heads + h) * hd + d] = acc / sum;
        }
      }
    const Shape s{n_heads, n_kv, hd, hd, 32, false};
    std::vector<float> scalar;
    for (Isa isa : isas()) {
      force_isa(isa);
      std::vector<float> out(q.size(), -1.0f);
      attention(heads.data(), n_kv, q.data(), T, n_heads, pos.data(), out.data(), 0.0f, 1);
      compare(out, want, isa_name(isa), s, pos[0], T, 2e-5);
      if (isa == Isa::Scalar) scalar = out;
      compare(out, std::vector<double>(scalar.begin(), scalar.end()), "vs scalar", s, pos[0], T, 2e-5);
      std::vector<float> out2(q.size());
      attention(heads.data(), n_kv, q.data(), T, n_heads, pos.data(), out2.data(), 0.0f, 2);
      compare(out2, want, "threads=2", s, pos[0], T, 2e-5);
      CHECK(*std::min_element(pos.begin(), pos.end()) >= 255 || out2 == out,
            "threads=2 not bit-identical to 1 thread at pos %lld", (long long)pos[0]);
      attention(heads.data(), n_kv, q.data(), T, n_heads, pos.data(), out2.data(), 0.0f, 4);
      compare(out2, want, "threads=4", s, pos[0], T, 2e-5);
    }
    reset_isa();
  }
}

template <class F>
void expect_invalid(F f, const char* what) {
  bool thrown = false;
  try {
    f();
  } catch (const std::invalid_argument& e) {
    thrown = true;
    CHECK(std::strstr(e.what(), "quant_kv") != nullptr, "%s: message lacks context: %s", what, e.what());
  }
  CHECK(thrown, "%s: no std::invalid_argument", what);
}

void check_errors() {
  expect_invalid([] { QuantKVCache(2, 64, 16, 3, 64); }, "bits 3");
  expect_invalid([] { QuantKVCache(2, 64, 16, 4, 24); }, "group 24 with head_dim 64");
  expect_invalid([] { QuantKVCache(2, 63, 16, 4, 63); }, "odd head_dim at 4 bits");
  expect_invalid([] { QuantKVCache(0, 64, 16, 4, 64); }, "no heads");
  expect_invalid([] { QuantKVCache(2, 48, 16, 8, 48, true); }, "rotate with head_dim 48");
  QuantKVCache c(1, 32, 4, 8, 32);
  std::vector<float> kv(5 * 32, 0.5f), q(5 * 2 * 32, 0.1f), out(q.size());
  expect_invalid([&] { c.append(kv.data(), kv.data(), 5, 0); }, "beyond max_seq_len");
  expect_invalid([&] { c.append(kv.data(), kv.data(), 1, 1); }, "gap");
  c.append(kv.data(), kv.data(), 2, 0);
  expect_invalid([&] { quant_kv_attention(c, q.data(), 1, 2, 2, out.data()); }, "query beyond the cache");
  expect_invalid([&] { quant_kv_attention(c, q.data(), 1, 0, 0, out.data()); }, "no query heads");
  QuantKVCache c2(2, 32, 4, 8, 32);
  expect_invalid([&] { quant_kv_attention(c2, q.data(), 0, 3, 0, out.data()); }, "3 heads over 2 kv heads");
  const std::vector<uint8_t> before(c.codes(0), c.codes(0) + 2 * c.row_bytes());
  std::vector<float> bad(2 * 32, -0.25f);
  bad[40] = std::nanf("");  // the second token: a failed overwrite must leave the first one untouched too
  expect_invalid([&] { c.append(bad.data(), bad.data(), 2, 0); }, "NaN");
  CHECK(std::equal(before.begin(), before.end(), c.codes(0)) && c.length() == 2, "failed append changed the cache");
}

}  // namespace

int main() {
  uint32_t seed = 11;
  for (int64_t hd : {64, 128})
    for (int bits : {4, 8})
      for (int64_t ratio : {1, 3, 4})
        for (int64_t group : {int64_t{32}, hd}) {
          const bool rotate = (seed % 2) == 0;
          run_shape({2 * ratio, 2, hd, group, bits, rotate}, seed++);
        }
  run_shape({3, 1, 64, 64, 4, true}, seed++);
  run_shape({8, 1, 64, 64, 8, false}, seed++);       // ratio 8 (two query blocks)
  run_shape({6, 2, 40, 8, 4, false}, seed++);        // groups of 8 at 4 bits: AVX2 / AVX-512 fall back
  run_shape({4, 2, 48, 16, 4, false}, seed++);        // groups of 16: AVX2 and NEON vectorized, AVX-512 falls back
  run_shape({4, 2, 20, 10, 8, false}, seed++);       // groups of 10: every SIMD path falls back
  run_float(9, 3, 64, seed++);                       // SmolLM2's attention
  run_float(4, 4, 128, seed++);
  run_float(8, 1, 16, seed++);                       // one AVX-512 vector a row
  run_float(6, 2, 12, seed++);                       // head_dim 12: every SIMD path falls back
  run_float(1, 1, 1, seed++);
  // Long contexts: with 2 threads, decode steps from 256 rows split them in 2 chunks (4 threads: 4 chunks where
  // the machine has 4 cores)
  run_shape({9, 3, 64, 32, 4, true}, seed++, {1, 126, 1, 200, 1, 400, 1});
  run_shape({4, 1, 128, 128, 8, false}, seed++, {127, 1, 1, 200, 1});
  run_float(9, 3, 64, seed++, {{127}, {128}, {300}, {999}, {200, 513}, {64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74}});
  run_float(6, 2, 12, seed++, {{255}, {700}});  // head_dim 12: chunks on the scalar fallback
  check_errors();
  if (g_failures) {
    std::fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("test_attention: ok (ISAs:");
  for (Isa isa : isas()) std::printf(" %s", isa_name(isa));
  std::printf(")\n");
  return 0;
}
