// The SIMD fast Walsh-Hadamard transform, written once over a small vector-traits type V and
// instantiated by each ISA file (hadamard_avx2.cpp, hadamard_avx512.cpp, hadamard_neon.cpp) with its
// own compile flags. V provides: T, W (floats per vector), kRadix (vectors a pass: 8 or 16), kMixRows
// (H_K rows per mixing block), load, store, add, sub, mul, fma(a, b, c) = a * b + c, set1, zero and inreg
// (the log2(W) in-vector stages, strides ascending).
// Stages run in the scalar reference's order (strides ascending; each stage a full set of butterflies),
// so every element sees the same additions in the same order: results are bit-identical.
#pragma once

#include <algorithm>
#include <cstring>

#include "spinquant/hadamard.h"

namespace spinquant::detail {

template <class V>
struct HadamardSimd {
  using T = typename V::T;
  static constexpr int64_t W = V::W;
  static constexpr int kMaxRadix = V::kRadix;  // vectors held in registers per memory pass (log2 stages)

  static void butterfly(T& a, T& b) {
    const T s = V::add(a, b);
    b = V::sub(a, b);
    a = s;
  }

  // Stages of strides s*h for s = 1..R/2 over R vectors v[t] = x[t * h] (already loaded).
  template <int R>
  static void cross_stages(T* v) {
#pragma GCC unroll 4
    for (int s = 1; s < R; s *= 2)
#pragma GCC unroll 16
      for (int i = 0; i < R; i += 2 * s)
#pragma GCC unroll 16
        for (int j = i; j < i + s; ++j) butterfly(v[j], v[j + s]);
  }

  // v[t] -> p[t * stride], times sc in the last pass.
  template <int R>
  static void store_all(T* v, float* p, int64_t stride, bool last, T sc) {
    if (last) {
#pragma GCC unroll 16
      for (int t = 0; t < R; ++t) V::store(p + t * stride, V::mul(v[t], sc));
    } else {
#pragma GCC unroll 16
      for (int t = 0; t < R; ++t) V::store(p + t * stride, v[t]);
    }
  }

  // First pass: R consecutive vectors, in-vector stages then strides W..(R/2)W.
  template <int R>
  static void first_pass(float* x, int64_t m, bool last, float scale) {
    const T sc = V::set1(scale);
    for (int64_t j = 0; j < m; j += R * W) {
      T v[R];
#pragma GCC unroll 16
      for (int t = 0; t < R; ++t) v[t] = V::inreg(V::load(x + j + t * W));
      cross_stages<R>(v);
      store_all<R>(v, x + j, W, last, sc);
    }
  }

  // Later pass: strides h..(R/2)h over vectors R apart by h.
  template <int R>
  static void stride_pass(float* x, int64_t m, int64_t h, bool last, float scale) {
    const T sc = V::set1(scale);
    for (int64_t j = 0; j < m; j += R * h)
      for (int64_t o = j; o < j + h; o += W) {
        T v[R];
#pragma GCC unroll 16
        for (int t = 0; t < R; ++t) v[t] = V::load(x + o + t * h);
        cross_stages<R>(v);
        store_all<R>(v, x + o, h, last, sc);
      }
  }

  template <template <int> class F, class... Args>
  static void by_radix(int64_t radix, Args... args) {
    switch (radix) {
      case 1: return F<1>::run(args...);
      case 2: return F<2>::run(args...);
      case 4: return F<4>::run(args...);
      case 8: return F<8>::run(args...);
      default: return F<16>::run(args...);
    }
  }
  template <int R>
  struct First {
    static void run(float* x, int64_t m, bool last, float scale) { first_pass<R>(x, m, last, scale); }
  };
  template <int R>
  struct Stride {
    static void run(float* x, int64_t m, int64_t h, bool last, float scale) {
      stride_pass<R>(x, m, h, last, scale);
    }
  };

  // FWHT over m = 2^k >= W floats; multiplies by `scale` in the last pass when `with_scale`.
  static void fwht(float* x, int64_t m, bool with_scale, float scale) {
    int64_t radix = std::min<int64_t>(kMaxRadix, m / W);
    int64_t h = radix * W;
    by_radix<First>(radix, x, m, with_scale && h == m, scale);
    for (; h < m; h *= radix) {
      radix = std::min<int64_t>(kMaxRadix, m / h);
      by_radix<Stride>(radix, x, m, h, with_scale && h * radix == m, scale);
    }
  }

  // y[a', b] = scale * sum_a H_K[a', a] x[a, b] into scratch for A output rows a' and B vectors of b at a time
  // (A * B accumulators, each x vector loaded once for A rows), then copied back. fma(x, +-1, acc) rounds
  // once, exactly as the reference's acc + x / acc - x.
  template <int A, int B>
  static void mix_block(const float* x, const HadamardTransform& t, int64_t ao, int64_t b, float* scratch) {
    const int64_t K = t.K(), m = t.m();
    const float* hk = t.hk();
    T acc[A][B];
#pragma GCC unroll 4
    for (int i = 0; i < A; ++i)
#pragma GCC unroll 4
      for (int u = 0; u < B; ++u) acc[i][u] = V::zero();
    for (int64_t a = 0; a < K; ++a) {
      T xs[B];
#pragma GCC unroll 4
      for (int u = 0; u < B; ++u) xs[u] = V::load(x + a * m + b + u * W);
#pragma GCC unroll 4
      for (int i = 0; i < A; ++i) {
        const T s = V::set1(hk[(ao + i) * K + a]);
#pragma GCC unroll 4
        for (int u = 0; u < B; ++u) acc[i][u] = V::fma(xs[u], s, acc[i][u]);
      }
    }
    const T sc = V::set1(t.scale());
#pragma GCC unroll 4
    for (int i = 0; i < A; ++i)
#pragma GCC unroll 4
      for (int u = 0; u < B; ++u) V::store(scratch + (ao + i) * m + b + u * W, V::mul(acc[i][u], sc));
  }

  template <int B>
  static void mix(float* x, const HadamardTransform& t, float* scratch) {
    constexpr int A = V::kMixRows;
    const int64_t K = t.K(), m = t.m();
    for (int64_t b = 0; b < m; b += B * W) {
      int64_t ao = 0;
      for (; ao + A <= K; ao += A) mix_block<A, B>(x, t, ao, b, scratch);
      for (; ao < K; ++ao) mix_block<1, B>(x, t, ao, b, scratch);
    }
    std::memcpy(x, scratch, sizeof(float) * static_cast<size_t>(K * m));
  }

  // Returns false when m < W (the caller then uses the scalar reference, same results).
  static bool row(float* x, const HadamardTransform& t, float* scratch) {
    const int64_t K = t.K(), m = t.m();
    if (m < W) return false;
    for (int64_t a = 0; a < K; ++a) fwht(x + a * m, m, K == 1, t.scale());
    if (K == 1) return true;
    if (m >= 4 * W)
      mix<4>(x, t, scratch);
    else if (m >= 2 * W)
      mix<2>(x, t, scratch);
    else
      mix<1>(x, t, scratch);
    return true;
  }
};

}  // namespace spinquant::detail
