// The SIMD quantized-KV attention kernel, written once over a vector-traits type V and instantiated by
// each ISA file (attention_avx2.cpp, attention_avx512.cpp, attention_neon.cpp) with its own flags.
// V provides: T, W, load, store, zero, set1, add, sub, mul, fma(a, b, c) = a * b + c, max, hsum, hmax,
// round (to nearest even), pow2 (2^n for integral n in [-126, 127]) and codes4 / codes8 (W codes from a
// row pointer as floats).
// Dequantized values are computed as in the reference, (code - zero) * scale; only the summation order
// of dot products and the exp differ, so results match the reference to float rounding.
#pragma once

#include <algorithm>

#include "spinquant/attention.h"

namespace spinquant::detail {

template <class V>
struct AttentionSimd {
  using T = typename V::T;
  static constexpr int64_t W = V::W;
  static constexpr int kQueryBlock = 4;  // query heads scored together per dequantized K row

  // e^x for x <= 0 (Cephes-style: x = n ln2 + r, |r| <= ln2 / 2, degree-5 polynomial; ~2 ulp).
  static T exp(T x) {
    x = V::max(x, V::set1(-87.0f));  // e^-87 ~ 1.6e-38 stays a normal float; smaller weights are 0 anyway
    const T n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
    T r = V::fma(n, V::set1(-0.693359375f), x);
    r = V::fma(n, V::set1(2.12194440e-4f), r);
    T p = V::set1(1.9875691500e-4f);
    p = V::fma(p, r, V::set1(1.3981999507e-3f));
    p = V::fma(p, r, V::set1(8.3334519073e-3f));
    p = V::fma(p, r, V::set1(4.1665795894e-2f));
    p = V::fma(p, r, V::set1(1.6666665459e-1f));
    p = V::fma(p, r, V::set1(5.0000001201e-1f));
    p = V::fma(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
    return V::mul(p, V::pow2(n));
  }

  // True if the vector code paths apply (groups and head_dim whole vectors).
  static bool supported(const KVHeadView& kv) { return kv.group % W == 0 && kv.head_dim % W == 0; }

  static T codes(const KVHeadView& kv, const uint8_t* row, int64_t d) {
    return kv.bits == 8 ? V::codes8(row + d) : V::codes4(row + d / 2);
  }

  // scores[i * len + j] = scale * q_i . k_j for RB query heads.
  template <int RB>
  static void score_block(const float* q, const KVHeadView& kv, int64_t len, float scale, float* scores) {
    const int64_t hd = kv.head_dim;
    for (int64_t j = 0; j < len; ++j) {
      const uint8_t* row = kv.codes[0] + j * kv.row_bytes;
      const float* s = kv.scales[0] + j * kv.groups;
      const float* z = kv.zeros[0] + j * kv.groups;
      T acc[RB];
      for (int i = 0; i < RB; ++i) acc[i] = V::zero();
      for (int64_t g = 0; g < kv.groups; ++g) {
        const T sg = V::set1(s[g]), zg = V::set1(z[g]);
        for (int64_t d = g * kv.group; d < (g + 1) * kv.group; d += W) {
          const T k = V::mul(V::sub(codes(kv, row, d), zg), sg);
          for (int i = 0; i < RB; ++i) acc[i] = V::fma(V::load(q + i * hd + d), k, acc[i]);
        }
      }
      for (int i = 0; i < RB; ++i) scores[i * len + j] = V::hsum(acc[i]) * scale;
    }
  }

  // In place: s = exp(s - max) / sum over one row of scores.
  static void softmax(float* s, int64_t len) {
    T mv = V::set1(s[0]);
    int64_t j = 0;
    for (; j + W <= len; j += W) mv = V::max(mv, V::load(s + j));
    float mx = V::hmax(mv);
    for (int64_t k = j; k < len; ++k) mx = std::max(mx, s[k]);
    const T m = V::set1(mx);
    T sv = V::zero();
    for (j = 0; j + W <= len; j += W) {
      const T e = exp(V::sub(V::load(s + j), m));
      V::store(s + j, e);
      sv = V::add(sv, e);
    }
    float tail_sum = 0.0f;
    if (j < len) {  // the last partial vector through a padded buffer
      float buf[W];
      std::fill(buf, buf + W, mx);
      std::copy(s + j, s + len, buf);
      V::store(buf, exp(V::sub(V::load(buf), m)));
      for (int64_t k = j; k < len; ++k) tail_sum += (s[k] = buf[k - j]);
    }
    const float inv = 1.0f / (V::hsum(sv) + tail_sum);
    const T iv = V::set1(inv);
    for (j = 0; j + W <= len; j += W) V::store(s + j, V::mul(V::load(s + j), iv));
    for (; j < len; ++j) s[j] *= inv;
  }

  // out_i += sum_j p[i * len + j] * v_j for r query heads.
  static void accumulate_v(const float* p, int64_t r, const KVHeadView& kv, int64_t len, float* out) {
    const int64_t hd = kv.head_dim;
    for (int64_t i = 0; i < r * hd; i += W) V::store(out + i, V::zero());
    for (int64_t j = 0; j < len; ++j) {
      const uint8_t* row = kv.codes[1] + j * kv.row_bytes;
      const float* s = kv.scales[1] + j * kv.groups;
      const float* z = kv.zeros[1] + j * kv.groups;
      for (int64_t g = 0; g < kv.groups; ++g) {
        const T sg = V::set1(s[g]), zg = V::set1(z[g]);
        for (int64_t d = g * kv.group; d < (g + 1) * kv.group; d += W) {
          const T v = V::mul(V::sub(codes(kv, row, d), zg), sg);
          for (int64_t i = 0; i < r; ++i) {
            float* o = out + i * hd + d;
            V::store(o, V::fma(V::set1(p[i * len + j]), v, V::load(o)));
          }
        }
      }
    }
  }

  static void attend(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                     float* scratch) {
    for (int64_t i0 = 0; i0 < r; i0 += kQueryBlock) {
      const float* qb = q + i0 * kv.head_dim;
      float* sb = scratch + i0 * len;
      switch (std::min<int64_t>(kQueryBlock, r - i0)) {
        case 1: score_block<1>(qb, kv, len, scale, sb); break;
        case 2: score_block<2>(qb, kv, len, scale, sb); break;
        case 3: score_block<3>(qb, kv, len, scale, sb); break;
        default: score_block<4>(qb, kv, len, scale, sb); break;
      }
    }
    for (int64_t i = 0; i < r; ++i) softmax(scratch + i * len, len);
    accumulate_v(scratch, r, kv, len, out);
  }
};

}  // namespace spinquant::detail
