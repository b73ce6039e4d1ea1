// The element-wise kernels (spinquant/elementwise.h), written once over vector traits V (see simd_math.h) and
// instantiated by each ISA file with its flags; the scalar traits below are the reference and also run every
// tail shorter than a vector, with the same operations, so all paths agree bit for bit. Files including this
// header are compiled with -ffp-contract=off: a multiply and an add must stay two roundings everywhere.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "simd_math.h"

namespace spinquant::detail {

// Kernel table of one ISA (rows already split by the dispatcher).
struct ElementwiseKernels {
  void (*rms_norm)(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y);
  void (*silu_mul)(const float* gate_up, int64_t rows, int64_t f, float* y);
  void (*rope)(const float* x, const float* cos, const float* sin, int64_t T, int64_t H, int64_t D, float* y);
  void (*add)(const float* a, const float* b, int64_t n, float* y);
  int64_t (*argmax)(const float* x, int64_t n);
};

const ElementwiseKernels& elementwise_ref();
#if defined(__x86_64__)
const ElementwiseKernels& elementwise_avx2();
const ElementwiseKernels& elementwise_avx512();
#elif defined(__aarch64__)
const ElementwiseKernels& elementwise_neon();
#endif

namespace {

// One float a "vector": the reference, and the tails of the vector paths.
struct Scalar {
  using T = float;
  static constexpr int64_t W = 1;
  static T load(const float* p) { return *p; }
  static void store(float* p, T v) { *p = v; }
  static T zero() { return 0.0f; }
  static T set1(float f) { return f; }
  static T add(T a, T b) { return a + b; }
  static T sub(T a, T b) { return a - b; }
  static T mul(T a, T b) { return a * b; }
  static T div(T a, T b) { return a / b; }
  static T fma(T a, T b, T c) { return std::fma(a, b, c); }
  static T max(T a, T b) { return a > b ? a : b; }
  static T min(T a, T b) { return a < b ? a : b; }
  static float hsum(T v) { return v; }
  static float hmax(T v) { return v; }
  static T round(T x) { return std::nearbyint(x); }
  static T pow2(T n) {
    const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};

template <class V>
struct ElementwiseSimd {
  using T = typename V::T;
  static constexpr int64_t W = V::W;
  static constexpr int kPartials = 16;  // running partial sums of the RMSNorm reduction, on every ISA
  static_assert(kPartials % W == 0, "a vector holds whole partial sums");

  static float sum_squares(const float* x, int64_t n) {
    constexpr int A = kPartials / W;
    T acc[A];
    for (int a = 0; a < A; ++a) acc[a] = V::zero();
    int64_t i = 0;
    for (; i + kPartials <= n; i += kPartials)
      for (int a = 0; a < A; ++a) {
        const T v = V::load(x + i + a * W);
        acc[a] = V::fma(v, v, acc[a]);
      }
    float p[kPartials];
    for (int a = 0; a < A; ++a) V::store(p + a * W, acc[a]);
    for (int64_t j = 0; i + j < n; ++j) p[j] = std::fma(x[i + j], x[i + j], p[j]);
    for (int s = kPartials / 2; s > 0; s /= 2)
      for (int j = 0; j < s; ++j) p[j] += p[j + s];
    return p[0];
  }

  static void rms_norm(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y) {
    for (int64_t r = 0; r < rows; ++r, x += n, y += n) {
      const float inv = 1.0f / std::sqrt(sum_squares(x, n) / static_cast<float>(n) + eps);
      const T vinv = V::set1(inv);
      int64_t i = 0;
      for (; i + W <= n; i += W) V::store(y + i, V::mul(V::mul(V::load(x + i), vinv), V::load(w + i)));
      for (; i < n; ++i) y[i] = x[i] * inv * w[i];
    }
  }

  template <class U>
  static void silu_mul_span(const float* g, const float* u, int64_t begin, int64_t end, float* y) {
    const typename U::T one = U::set1(1.0f);
    for (int64_t j = begin; j < end; j += U::W) {
      const typename U::T gj = U::load(g + j);
      const typename U::T e = vexp<U>(U::sub(U::zero(), gj));
      U::store(y + j, U::mul(U::div(gj, U::add(one, e)), U::load(u + j)));
    }
  }

  static void silu_mul(const float* gate_up, int64_t rows, int64_t f, float* y) {
    const int64_t body = f / W * W;
    for (int64_t r = 0; r < rows; ++r, gate_up += 2 * f, y += f) {
      silu_mul_span<V>(gate_up, gate_up + f, 0, body, y);
      silu_mul_span<Scalar>(gate_up, gate_up + f, body, f, y);
    }
  }

  template <class U>
  static void rope_span(const float* x, const float* c, const float* s, int64_t half, int64_t begin, int64_t end,
                        float* y) {
    for (int64_t i = begin; i < end; i += U::W) {
      const typename U::T a = U::load(x + i), b = U::load(x + i + half);
      U::store(y + i, U::sub(U::mul(a, U::load(c + i)), U::mul(b, U::load(s + i))));
      U::store(y + i + half, U::add(U::mul(b, U::load(c + i + half)), U::mul(a, U::load(s + i + half))));
    }
  }

  static void rope(const float* x, const float* cos, const float* sin, int64_t T_, int64_t H, int64_t D, float* y) {
    const int64_t half = D / 2, body = half / W * W;
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t off = (t * H + h) * D;
        rope_span<V>(x + off, cos + t * D, sin + t * D, half, 0, body, y + off);
        rope_span<Scalar>(x + off, cos + t * D, sin + t * D, half, body, half, y + off);
      }
  }

  static void add(const float* a, const float* b, int64_t n, float* y) {
    int64_t i = 0;
    for (; i + W <= n; i += W) V::store(y + i, V::add(V::load(a + i), V::load(b + i)));
    for (; i < n; ++i) y[i] = a[i] + b[i];
  }

  // The first index of the largest of x[0, n), as the scan `if (x[i] > x[best]) best = i` finds it (greedy
  // decoding's argmax over the vocabulary). The largest of each kBlock floats in vectors, then a scan of the
  // first block that holds the overall largest; a NaN or an infinity anywhere (then some x * 0 is NaN) takes the
  // plain scan, whose NaN rules no vector max shares.
  static int64_t argmax(const float* x, int64_t n) {
    constexpr int64_t kBlock = 1024;
    float best = x[0], poison = 0.0f;
    int64_t best_block = 0;
    for (int64_t b = 0; b < n; b += kBlock) {
      const int64_t end = std::min(n, b + kBlock);
      T m = V::set1(x[b]), bad = V::zero();
      int64_t i = b;
      for (; i + W <= end; i += W) {
        const T v = V::load(x + i);
        m = V::max(m, v);
        bad = V::fma(v, V::zero(), bad);
      }
      float mb = V::hmax(m);
      poison += V::hsum(bad);
      for (; i < end; ++i) {
        mb = std::max(mb, x[i]);
        poison += x[i] * 0.0f;
      }
      if (mb > best) {
        best = mb;
        best_block = b;
      }
    }
    if (poison == 0.0f) {
      int64_t i = best_block;
      while (x[i] != best) ++i;
      return i;
    }
    int64_t at = 0;
    for (int64_t i = 1; i < n; ++i)
      if (x[i] > x[at]) at = i;
    return at;
  }

  static const ElementwiseKernels& table() {
    static const ElementwiseKernels k{rms_norm, silu_mul, rope, add, argmax};
    return k;
  }
};

}  // namespace

}  // namespace spinquant::detail
