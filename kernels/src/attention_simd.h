// The SIMD quantized-KV attention kernel, written once over a vector-traits type V and instantiated by
// each ISA file (attention_avx2.cpp, attention_avx512.cpp, attention_neon.cpp) with its own flags.
// V provides (besides what simd_math.h uses): kScoreHeads x kScoreTokens (query heads x tokens per scoring pass)
// and kValueHeads (query heads per V pass) within the register budget, hsum, hsum4 (four vectors' sums at once),
// hmax, codes8 (W codes from a pointer as floats) and codes4_pair
// (2W codes from W bytes: the low nibbles, i.e. even channels, then the high nibbles, as floats).
// Dequantized values are computed as in the reference, (code - zero) * scale (float caches, "32 bits", are
// read as they are); only the summation order of dot products and the exp differ, so results match the
// reference to float rounding.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "simd_math.h"
#include "spinquant/attention.h"

namespace spinquant::detail {

template <class V>
struct AttentionSimd {
  using T = typename V::T;
  static constexpr int64_t W = V::W;

  // Vectors per code load: 8-bit codes and floats come W at a time in channel order; 4-bit codes come 2W at a time
  // (W bytes) as two vectors, the even channels then the odd ones (low and high nibbles) -- the "paired"
  // layout that q and the V accumulators use at 4 bits (converted once per call, see attend_bits).
  template <int Bits>
  static constexpr int64_t kStep = Bits == 4 ? 2 : 1;

  // True if the vector code paths apply (groups and head_dim whole code loads).
  static bool supported(const KVHeadView& kv) {
    const int64_t block = (kv.bits == 4 ? 2 : 1) * W;
    return kv.group % block == 0 && kv.head_dim % block == 0;
  }

  // Row j of cache tensor `which` (0 K, 1 V): its codes, scales and zeros.
  struct Row {
    const uint8_t* codes;
    const float* scales;
    const float* zeros;
  };
  template <int Bits>
  static Row row(const KVHeadView& kv, int which, int64_t j) {
    if constexpr (Bits == 32) return {kv.codes[which] + j * kv.row_bytes, nullptr, nullptr};
    return {kv.codes[which] + j * kv.row_bytes, kv.scales[which] + j * kv.groups, kv.zeros[which] + j * kv.groups};
  }

  // kStep vectors of channels from d (a multiple of kStep * W) of a row, all in group g:
  // (code - zero) * scale, exactly as the reference.
  template <int Bits>
  static void dequant(const Row& r, int64_t d, int64_t g, T* v) {
    if constexpr (Bits == 32) {
      v[0] = V::load(reinterpret_cast<const float*>(r.codes) + d);
      return;
    }
    const T z = V::set1(r.zeros[g]), s = V::set1(r.scales[g]);
    if constexpr (Bits == 8) {
      v[0] = V::mul(V::sub(V::codes8(r.codes + d), z), s);
    } else {
      T lo, hi;
      V::codes4_pair(r.codes + d / 2, lo, hi);
      v[0] = V::mul(V::sub(lo, z), s);
      v[1] = V::mul(V::sub(hi, z), s);
    }
  }

  // 4-bit paired layout <-> channel order, per block of 2W channels: paired[p] = x[2p], paired[W + p] = x[2p + 1].
  static void to_paired(const float* x, int64_t n, float* out) {
    for (int64_t b = 0; b < n; b += 2 * W)
      for (int64_t p = 0; p < W; ++p) {
        out[b + p] = x[b + 2 * p];
        out[b + W + p] = x[b + 2 * p + 1];
      }
  }
  static void from_paired(const float* x, int64_t n, float* out) {
    for (int64_t b = 0; b < n; b += 2 * W)
      for (int64_t p = 0; p < W; ++p) {
        out[b + 2 * p] = x[b + p];
        out[b + 2 * p + 1] = x[b + W + p];
      }
  }

  // scores[i * len + j] = scale * q_i . k_j for RB query heads and TB <= 4 tokens from j0: RB x TB
  // accumulators, each head's TB sums reduced together (one reduction per 4 scores).
  template <int Bits, int RB, int TB>
  static void score_tokens(const float* q, const KVHeadView& kv, int64_t j0, int64_t len, float scale,
                           float* scores) {
    const int64_t hd = kv.head_dim;
    T acc[RB][4];
#pragma GCC unroll 4
    for (int i = 0; i < RB; ++i)
#pragma GCC unroll 4
      for (int t = 0; t < 4; ++t) acc[i][t] = V::zero();
#pragma GCC unroll 4
    for (int t = 0; t < TB; ++t) {
      const Row r = row<Bits>(kv, 0, j0 + t);
      for (int64_t g = 0, d = 0; g < kv.groups; ++g)
        for (const int64_t end = d + kv.group; d < end; d += kStep<Bits> * W) {
          T k[kStep<Bits>];
          dequant<Bits>(r, d, g, k);
#pragma GCC unroll 2
          for (int u = 0; u < kStep<Bits>; ++u)
#pragma GCC unroll 4
            for (int i = 0; i < RB; ++i) acc[i][t] = V::fma(V::load(q + i * hd + d + u * W), k[u], acc[i][t]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; ++i) {
      float sums[4];
      V::hsum4(acc[i], sums);
#pragma GCC unroll 4
      for (int t = 0; t < TB; ++t) scores[i * len + j0 + t] = sums[t] * scale;
    }
  }

  // Prefetches rows [j0, j1) of cache tensor `which` (codes, and scales and zeros when quantized).
  template <int Bits>
  static void prefetch_rows(const KVHeadView& kv, int which, int64_t j0, int64_t j1) {
    const auto lines = [](const void* begin, const void* end) {  // every 64-byte line that [begin, end) touches
      for (auto a = reinterpret_cast<uintptr_t>(begin) & ~uintptr_t{63}; a < reinterpret_cast<uintptr_t>(end); a += 64)
        __builtin_prefetch(reinterpret_cast<const void*>(a));
    };
    lines(kv.codes[which] + j0 * kv.row_bytes, kv.codes[which] + j1 * kv.row_bytes);
    if constexpr (Bits != 32) {
      lines(kv.scales[which] + j0 * kv.groups, kv.scales[which] + j1 * kv.groups);
      lines(kv.zeros[which] + j0 * kv.groups, kv.zeros[which] + j1 * kv.groups);
    }
  }

  // Scores of RB query heads against keys [0, len); with prefetch_v, the value rows are prefetched alongside: at
  // decode the cache is cold (the weights streamed since evicted it), and the V pass then finds its rows loaded.
  template <int Bits, int RB>
  static void score_heads(const float* q, const KVHeadView& kv, int64_t len, float scale, float* scores,
                          bool prefetch_v) {
    constexpr int TB = V::kScoreTokens;
    int64_t j = 0;
    for (; j + TB <= len; j += TB) {
      if (prefetch_v) prefetch_rows<Bits>(kv, 1, j, j + TB);
      score_tokens<Bits, RB, TB>(q, kv, j, len, scale, scores);
    }
    if (prefetch_v) prefetch_rows<Bits>(kv, 1, j, len);
    for (; j < len; ++j) score_tokens<Bits, RB, 1>(q, kv, j, len, scale, scores);
  }

  // fn(i0, integral_constant<RB>) over blocks of at most Block (2 or 4) query heads: the register budget.
  template <int Block, class F>
  static void by_head_block(int64_t r, F&& fn) {
    static_assert(Block == 2 || Block == 4, "query heads per block: 2 or 4");
    for (int64_t i0 = 0; i0 < r; i0 += Block) {
      switch (std::min<int64_t>(Block, r - i0)) {
        case 1: fn(i0, std::integral_constant<int, 1>{}); break;
        case 2: fn(i0, std::integral_constant<int, 2>{}); break;
        case 3: fn(i0, std::integral_constant<int, (Block > 2 ? 3 : 1)>{}); break;  // reached with Block 4 only
        default: fn(i0, std::integral_constant<int, Block>{}); break;
      }
    }
  }

  // In place: s = exp(s - max) / sum over one row of scores; stats (null, or [2]) receives max and sum.
  static void softmax(float* s, int64_t len, float* stats) {
    T mv = V::set1(s[0]);
    int64_t j = 0;
    for (; j + W <= len; j += W) mv = V::max(mv, V::load(s + j));
    float mx = V::hmax(mv);
    for (int64_t k = j; k < len; ++k) mx = std::max(mx, s[k]);
    const T m = V::set1(mx);
    T sv = V::zero();
    for (j = 0; j + W <= len; j += W) {
      const T e = vexp<V>(V::sub(V::load(s + j), m));
      V::store(s + j, e);
      sv = V::add(sv, e);
    }
    float tail_sum = 0.0f;
    if (j < len) {  // the last partial vector through a padded buffer
      float buf[W];
      std::fill(buf, buf + W, mx);
      std::copy(s + j, s + len, buf);
      V::store(buf, vexp<V>(V::sub(V::load(buf), m)));
      for (int64_t k = j; k < len; ++k) tail_sum += (s[k] = buf[k - j]);
    }
    const float sum = V::hsum(sv) + tail_sum, inv = 1.0f / sum;
    const T iv = V::set1(inv);
    for (j = 0; j + W <= len; j += W) V::store(s + j, V::mul(V::load(s + j), iv));
    for (; j < len; ++j) s[j] *= inv;
    if (stats) {
      stats[0] = mx;
      stats[1] = sum;
    }
  }

  // out_i[d0 .. d0 + NV * W) = sum_j p[i * len + j] * v_j for RB query heads, accumulated in registers.
  template <int Bits, int RB, int NV>
  static void v_block(const float* p, const KVHeadView& kv, int64_t len, int64_t d0, float* out) {
    static_assert(NV % kStep<Bits> == 0, "whole code loads");
    int64_t g[NV];
    for (int u = 0; u < NV; ++u) g[u] = (d0 + u * W) / kv.group;
    T acc[RB][NV];
#pragma GCC unroll 4
    for (int i = 0; i < RB; ++i)
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) acc[i][u] = V::zero();
    for (int64_t j = 0; j < len; ++j) {
      const Row r = row<Bits>(kv, 1, j);
      T pj[RB];
#pragma GCC unroll 4
      for (int i = 0; i < RB; ++i) pj[i] = V::set1(p[i * len + j]);
      T v[NV];
#pragma GCC unroll 4
      for (int u = 0; u < NV; u += kStep<Bits>) dequant<Bits>(r, d0 + u * W, g[u], v + u);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u)
#pragma GCC unroll 4
        for (int i = 0; i < RB; ++i) acc[i][u] = V::fma(pj[i], v[u], acc[i][u]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; ++i)
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) V::store(out + i * kv.head_dim + d0 + u * W, acc[i][u]);
  }

  template <int Bits, int RB>
  static void v_heads(const float* p, const KVHeadView& kv, int64_t len, float* out) {
    constexpr int NV = 4;  // vectors of channels per pass: RB * NV accumulators stay in registers
    int64_t d = 0;
    for (; d + NV * W <= kv.head_dim; d += NV * W) v_block<Bits, RB, NV>(p, kv, len, d, out);
    for (; d < kv.head_dim; d += kStep<Bits> * W) v_block<Bits, RB, kStep<Bits>>(p, kv, len, d, out);
  }

  template <int Bits>
  static void attend_bits(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                          float* scratch, float* stats) {
    const int64_t hd = kv.head_dim;
    float* tail = scratch + r * len;  // r * head_dim floats: q, then the output, in the paired layout at 4 bits
    if constexpr (Bits == 4) {
      to_paired(q, r * hd, tail);
      q = tail;
    }
    by_head_block<V::kScoreHeads>(r, [&](int64_t i0, auto rb) {
      score_heads<Bits, decltype(rb)::value>(q + i0 * hd, kv, len, scale, scratch + i0 * len, i0 == 0);
    });
    for (int64_t i = 0; i < r; ++i) softmax(scratch + i * len, len, stats ? stats + 2 * i : nullptr);
    float* o = Bits == 4 ? tail : out;
    by_head_block<V::kValueHeads>(r, [&](int64_t i0, auto rb) {
      v_heads<Bits, decltype(rb)::value>(scratch + i0 * len, kv, len, o + i0 * hd);
    });
    if constexpr (Bits == 4) from_paired(tail, r * hd, out);
  }

  // ---- prefill: a tile of query rows (tokens x the query heads of one KV head) against one KV head ----
  // Each block of kKeys cache rows is dequantized once for the whole tile, keys channel-major and values
  // row-major in scratch, so the tile's rows multiply plain floats from L1: per token, the rows are dequantized
  // once every kTileTokens tokens instead of once a token.

  static constexpr int kTileRows = V::kScoreHeads * V::kScoreTokens / 2;  // rows per pass x 2 vectors of keys
  static constexpr int64_t kKeys = 2 * W;
  static_assert(kTileRows % V::kValueHeads == 0 && kTileRows <= 16 && W <= 16, "tile rows: whole value passes");

  // s[i * ls + 0 .. kKeys) = scale * q_i . keys of the block kt [hd][kKeys] for kTileRows rows of q [.][hd].
  static void score_block(const float* q, const float* kt, int64_t hd, float scale, float* s, int64_t ls) {
    T acc[kTileRows][2];
#pragma GCC unroll 8
    for (int i = 0; i < kTileRows; ++i) acc[i][0] = acc[i][1] = V::zero();
    for (int64_t d = 0; d < hd; ++d) {
      const T k0 = V::load(kt + d * kKeys), k1 = V::load(kt + d * kKeys + W);
#pragma GCC unroll 8
      for (int i = 0; i < kTileRows; ++i) {
        const T b = V::set1(q[i * hd + d]);
        acc[i][0] = V::fma(b, k0, acc[i][0]);
        acc[i][1] = V::fma(b, k1, acc[i][1]);
      }
    }
    const T sc = V::set1(scale);
#pragma GCC unroll 8
    for (int i = 0; i < kTileRows; ++i) {
      V::store(s + i * ls, V::mul(acc[i][0], sc));
      V::store(s + i * ls + W, V::mul(acc[i][1], sc));
    }
  }

  // o[i][d0 .. d0 + NV * W) += sum_t p[i * lp + t] * vb[t][..] over the block's nk values, RB rows.
  template <int RB, int NV>
  static void value_block(const float* p, int64_t lp, const float* vb, int64_t nk, int64_t hd, int64_t d0, float* o) {
    T acc[RB][NV];
#pragma GCC unroll 4
    for (int i = 0; i < RB; ++i)
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) acc[i][u] = V::load(o + i * hd + d0 + u * W);
    for (int64_t t = 0; t < nk; ++t) {
      T v[NV];
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) v[u] = V::load(vb + t * hd + d0 + u * W);
#pragma GCC unroll 4
      for (int i = 0; i < RB; ++i) {
        const T b = V::set1(p[i * lp + t]);
#pragma GCC unroll 4
        for (int u = 0; u < NV; ++u) acc[i][u] = V::fma(b, v[u], acc[i][u]);
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; ++i)
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) V::store(o + i * hd + d0 + u * W, acc[i][u]);
  }

  // Dequantizes cache rows [j0, j0 + nk) of tensor `which` into floats: channel-major into kt [hd][kKeys]
  // (keys; columns past nk zero) or row-major into vb [nk][hd] (values). Paired channel order at 4 bits.
  template <int Bits>
  static void dequant_block(const KVHeadView& kv, int which, int64_t j0, int64_t nk, float* dst) {
    const int64_t hd = kv.head_dim;
    if (which == 0 && nk < kKeys)
      for (int64_t d = 0; d < hd; ++d) std::fill(dst + d * kKeys + nk, dst + (d + 1) * kKeys, 0.0f);
    for (int64_t t = 0; t < nk; ++t) {
      const Row r = row<Bits>(kv, which, j0 + t);
      for (int64_t g = 0, d = 0; g < kv.groups; ++g)
        for (const int64_t end = d + kv.group; d < end; d += kStep<Bits> * W) {
          T x[kStep<Bits>];
          dequant<Bits>(r, d, g, x);
          for (int u = 0; u < kStep<Bits>; ++u) {
            if (which == 1) {
              V::store(dst + t * hd + d + u * W, x[u]);
              continue;
            }
            alignas(64) float lane[W];
            V::store(lane, x[u]);
            for (int64_t l = 0; l < W; ++l) dst[(d + u * W + l) * kKeys + t] = lane[l];
          }
        }
    }
  }

  template <int Bits>
  static void attend_tile_bits(const float* q, int64_t m, int64_t r, int64_t stride, const int64_t* lens,
                               const KVHeadView& kv, float scale, float* out, float* scratch) {
    const int64_t hd = kv.head_dim, rows = m * r, mp = (rows + kTileRows - 1) / kTileRows * kTileRows;
    const int64_t len = *std::max_element(lens, lens + m), lp = (len + kKeys - 1) / kKeys * kKeys;
    float* qt = scratch;       // [mp][hd] the tile's queries (paired at 4 bits), rows past `rows` zero
    float* ot = qt + mp * hd;  // [mp][hd] its outputs
    float* s = ot + mp * hd;   // [mp][lp] scores, then probabilities (zero past each row's length)
    float* kb = s + mp * lp;   // [hd][kKeys] a block of keys, or [kKeys][hd] of values
    for (int64_t i = 0; i < rows; ++i) {
      const float* src = q + (i / r) * stride + (i % r) * hd;
      if constexpr (Bits == 4) to_paired(src, hd, qt + i * hd);
      else std::copy(src, src + hd, qt + i * hd);
    }
    std::fill(qt + rows * hd, qt + mp * hd, 0.0f);
    for (int64_t j0 = 0; j0 < len; j0 += kKeys) {
      dequant_block<Bits>(kv, 0, j0, std::min(kKeys, len - j0), kb);
      for (int64_t i0 = 0; i0 < mp; i0 += kTileRows) score_block(qt + i0 * hd, kb, hd, scale, s + i0 * lp + j0, lp);
    }
    for (int64_t i = 0; i < mp; ++i) {
      const int64_t n = i < rows ? lens[i / r] : 0;
      if (n > 0) softmax(s + i * lp, n, nullptr);
      std::fill(s + i * lp + n, s + (i + 1) * lp, 0.0f);
    }
    std::fill(ot, ot + mp * hd, 0.0f);
    constexpr int RB = V::kValueHeads, NV = 4;
    for (int64_t j0 = 0; j0 < len; j0 += kKeys) {
      const int64_t nk = std::min(kKeys, len - j0);
      dequant_block<Bits>(kv, 1, j0, nk, kb);
      for (int64_t i0 = 0; i0 < mp; i0 += RB) {
        int64_t d = 0;
        for (; d + NV * W <= hd; d += NV * W) value_block<RB, NV>(s + i0 * lp + j0, lp, kb, nk, hd, d, ot + i0 * hd);
        for (; d < hd; d += W) value_block<RB, 1>(s + i0 * lp + j0, lp, kb, nk, hd, d, ot + i0 * hd);
      }
    }
    for (int64_t i = 0; i < rows; ++i) {
      float* dst = out + (i / r) * stride + (i % r) * hd;
      if constexpr (Bits == 4) from_paired(ot + i * hd, hd, dst);
      else std::copy(ot + i * hd, ot + (i + 1) * hd, dst);
    }
  }

  static void attend_tile(const float* q, int64_t m, int64_t r, int64_t stride, const int64_t* lens,
                          const KVHeadView& kv, float scale, float* out, float* scratch) {
    if (kv.bits == 32)
      attend_tile_bits<32>(q, m, r, stride, lens, kv, scale, out, scratch);
    else if (kv.bits == 8)
      attend_tile_bits<8>(q, m, r, stride, lens, kv, scale, out, scratch);
    else
      attend_tile_bits<4>(q, m, r, stride, lens, kv, scale, out, scratch);
  }

  static void attend(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                     float* scratch, float* stats) {
    if (kv.bits == 32)
      attend_bits<32>(q, r, kv, len, scale, out, scratch, stats);
    else if (kv.bits == 8)
      attend_bits<8>(q, r, kv, len, scale, out, scratch, stats);
    else
      attend_bits<4>(q, r, kv, len, scale, out, scratch, stats);
  }
};

}  // namespace spinquant::detail
