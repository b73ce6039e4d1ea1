// AVX-512 VNNI int4 kernels. One 64-byte load holds a 16-row x 8-input tile; masking its nibbles
// gives two 16-row x 4-input s8 tiles, each multiplied by 4 broadcast u8 activation codes with
// vpdpbusd (one int32 lane per row).
// GCC 12 reports false "may be used uninitialized" warnings inside avx512fintrin.h's helpers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>

#include "../int4_kernels.h"

namespace spinquant::int4::detail {
namespace {

void quantize_avx512(const float* x, int64_t K, int bits, float clip, uint8_t* codes, float* scale,
                     int32_t* zero) {
  __m512 vlo = _mm512_set1_ps(x[0]), vhi = vlo;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m512 v = _mm512_loadu_ps(x + k);
    vlo = _mm512_min_ps(vlo, v);
    vhi = _mm512_max_ps(vhi, v);
  }
  float lo = _mm512_reduce_min_ps(vlo), hi = _mm512_reduce_max_ps(vhi);
  for (int64_t t = k; t < K; ++t) {
    lo = x[t] < lo ? x[t] : lo;
    hi = x[t] > hi ? x[t] : hi;
  }
  float s, fz;
  act_params(lo, hi, bits, clip, &s, zero, &fz);
  *scale = s;
  const float qmax = static_cast<float>((1 << bits) - 1);
  const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(fz), vmax = _mm512_set1_ps(qmax);
  for (k = 0; k + 16 <= K; k += 16) {
    __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + k), vs),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, vz), _mm512_setzero_ps()), vmax);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + k), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(q)));
  }
  for (; k < K; ++k) {
    float q = std::nearbyint(x[k] / s) + fz;
    q = q > 0.0f ? (q < qmax ? q : qmax) : 0.0f;  // nan -> 0, as the SIMD paths do
    codes[k] = static_cast<uint8_t>(q);
  }
}

inline __m512 load_scales(const PackedInt4& w, int64_t meta) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.scales.data() + meta)));
}

// One group's weight scales and zero points (8 when symmetric) for a row block: add() returns yacc plus a token's
// integer dot products d scaled, sa * s * (d - z * asum).
template <bool Asym>
struct GroupScale {
  __m512 s;
  __m512i z;

  GroupScale(const PackedInt4& w, int64_t meta) : s(load_scales(w, meta)), z(_mm512_set1_epi32(8)) {
    if (Asym) z = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.zeros.data() + meta)));
  }

  __m512 add(__m512 sa, int32_t asum, __m512i d, __m512 yacc) const {
    const __m512i za = Asym ? _mm512_mullo_epi32(z, _mm512_set1_epi32(asum)) : _mm512_set1_epi32(8 * asum);
    const __m512i isum = _mm512_sub_epi32(d, za);
    return _mm512_fmadd_ps(_mm512_mul_ps(sa, s), _mm512_cvtepi32_ps(isum), yacc);
  }
};

// Final step for one token: y = acc, or fma(shift, corr, acc) with shift = -(sa * za) on the
// quantized path; then + bias, stored for the block's valid rows.
template <bool Corr>
inline void store_rows(const Job& job, int64_t m, int64_t b, __m512 acc, float shift) {
  const PackedInt4& w = *job.w;
  const __mmask16 mask = static_cast<__mmask16>((1u << block_rows(w, b)) - 1);
  __m512 y = acc;
  if (Corr) y = _mm512_fmadd_ps(_mm512_set1_ps(shift), _mm512_loadu_ps(w.corr.data() + b * kRows), acc);
  if (job.bias != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, job.bias + b * kRows));
  _mm512_mask_storeu_ps(job.y + m * w.N + b * kRows, mask, y);
}

// acc += the 16 rows' products of the s8 weights q with the 4 activation codes at a. vpdpbusd is written out:
// around the intrinsic, GCC 12 copies decode_blocks' loop-carried accumulators into scratch registers and back.
inline void dot_acc(__m512i& acc, const uint8_t* a, __m512i q) {
  const __m512i x = _mm512_set1_epi32(static_cast<int>(load_u32(a)));
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(q));
}

// Tokens [m0, m0 + MT) x one row block, activation codes (prefill): each 64-byte line of codes is loaded and
// unpacked once for all MT tokens, and every token keeps two int32 accumulators (low and high nibbles) for the
// group and one fp32 row sum in registers; MT = 8 fills the 32 vector registers without spilling.
template <int MT, bool Asym>
void tile_codes(const Job& job, int64_t m0, int64_t b) {
  const PackedInt4& w = *job.w;
  const uint8_t* block = w.codes.data() + b * w.Kp * 8;
  const uint8_t* codes = job.codes + m0 * w.Kp;
  const __m512i nib = _mm512_set1_epi8(0x0f);
  __m512 yacc[MT];
  for (int i = 0; i < MT; ++i) yacc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.G; ++g) {
    __m512i lo[MT], hi[MT];
    for (int i = 0; i < MT; ++i) lo[i] = hi[i] = _mm512_setzero_si512();
    const uint8_t* a = codes + w.goff[g];
    for (const uint8_t *p = block + w.goff[g] * 8, *end = block + w.goff[g + 1] * 8; p < end; p += 64, a += 8) {
      const __m512i v = _mm512_load_si512(p);
      const __m512i ql = _mm512_and_si512(v, nib), qh = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
      for (int i = 0; i < MT; ++i) {
        dot_acc(lo[i], a + i * w.Kp, ql);
        dot_acc(hi[i], a + i * w.Kp + 4, qh);
      }
    }
    const GroupScale<Asym> gs(w, (b * w.G + g) * kRows);
    for (int i = 0; i < MT; ++i)
      yacc[i] = gs.add(_mm512_set1_ps(job.a_scale[m0 + i]), job.a_gsum[(m0 + i) * w.G + g],
                       _mm512_add_epi32(lo[i], hi[i]), yacc[i]);
  }
  for (int i = 0; i < MT; ++i) {
    const float shift = -(job.a_scale[m0 + i] * static_cast<float>(job.a_zero[m0 + i]));
    store_rows<true>(job, m0 + i, b, yacc[i], shift);
  }
}

// Accumulates one 64-byte line of codes at p (16 rows x 8 inputs) against the 8 activation codes at a, the low
// nibbles into lo and the high ones into hi, and prefetches kPrefetchBytes ahead.
inline void dot_line(const uint8_t* p, const uint8_t* a, __m512i nib, __m512i& lo, __m512i& hi) {
  _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
  const __m512i v = _mm512_load_si512(p);
  dot_acc(lo, a, _mm512_and_si512(v, nib));
  dot_acc(hi, a + 4, _mm512_and_si512(_mm512_srli_epi16(v, 4), nib));
}

// Two lines at p into two pairs of accumulators (independent chains).
inline void dot_pair(const uint8_t* p, const uint8_t* a, __m512i nib, __m512i& lo0, __m512i& hi0, __m512i& lo1,
                     __m512i& hi1) {
  dot_line(p, a, nib, lo0, hi0);
  dot_line(p + 64, a + 8, nib, lo1, hi1);
}

// One token (decode) over row blocks [b0, b1): tile_codes<1>'s arithmetic, bit for bit (integer sums in another
// order), in fewer instructions: 20 per two 64-byte lines where the generic tile took 28, 8 of them register moves
// around its accumulator array, and with C > 0 (every group C chunks of 64 bytes, no padding: group 8C dividing
// K) the group's chunks unrolled, without its offsets and an odd-chunk check. One thread streams the weights at
// memory speed either way; two may not where the CPUs share execution units (on the AMD EPYC VM of
// benchmarks/RESULTS.md, a vpdpbusd-bound loop runs 1.2-1.5x slower on both than on one).
template <bool Asym, int C>
void decode_blocks(const Job& job, int64_t b0, int64_t b1) {
  const PackedInt4& w = *job.w;
  const __m512i nib = _mm512_set1_epi8(0x0f);
  const __m512 sa = _mm512_set1_ps(job.a_scale[0]);
  const float shift = -(job.a_scale[0] * static_cast<float>(job.a_zero[0]));
  const int64_t* goff = w.goff.data();
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* block = w.codes.data() + b * w.Kp * 8;
    __m512 yacc = _mm512_setzero_ps();
    for (int64_t g = 0; g < w.G; ++g) {
      const int64_t meta = (b * w.G + g) * kRows;
      __m512i lo0 = _mm512_setzero_si512(), lo1 = _mm512_setzero_si512(), hi0 = _mm512_setzero_si512(),
              hi1 = _mm512_setzero_si512();
      // An odd number of 64-byte chunks: the first one alone, into its own accumulator (with the loop's, or after
      // the loop, GCC copies those around every vpdpbusd again).
      __m512i odd = _mm512_setzero_si512();
      if constexpr (C > 0) {
        static_assert(C % 2 == 0, "whole pairs of chunks");
        const uint8_t* p = block + g * C * 64;
        const uint8_t* a = job.codes + g * C * 8;
#pragma GCC unroll 8
        for (int c = 0; c < C; c += 2) dot_pair(p + c * 64, a + c * 8, nib, lo0, hi0, lo1, hi1);
      } else {
        const uint8_t* a = job.codes + goff[g];
        const uint8_t* p = block + goff[g] * 8;
        const uint8_t* const end = block + goff[g + 1] * 8;
        if ((end - p) & 64) {
          dot_line(p, a, nib, odd, odd);
          p += 64;
          a += 8;
        }
        for (; p < end; p += 128, a += 16) dot_pair(p, a, nib, lo0, hi0, lo1, hi1);
      }
      const __m512i d = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(lo0, lo1), _mm512_add_epi32(hi0, hi1)), odd);
      yacc = GroupScale<Asym>(w, meta).add(sa, job.a_gsum[g], d, yacc);
    }
    store_rows<true>(job, 0, b, yacc, shift);
  }
}

// Input J of a raw 64-byte tile as floats, lane r = row r: vpermps reads only the low 4 bits of each
// index lane, so shifting the nibble down and looking it up in {0, 1, ..., 15} both masks and converts.
// A accumulators a token (8 for one token: independent FMA chains; 2 when tokens supply the parallelism).
template <int MT, int A, int J>
inline void fma_inputs(__m512 (&acc)[MT][A], __m512i v, __m512 lut, const float* x, int64_t stride) {
  const __m512 ql = _mm512_permutexvar_ps(J == 0 ? v : _mm512_srli_epi32(v, 8 * J), lut);
  const __m512 qh = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 8 * J + 4), lut);
  constexpr int slot = (J % (A / 2)) * 2;
  for (int i = 0; i < MT; ++i) {
    acc[i][slot] = _mm512_fmadd_ps(ql, _mm512_set1_ps(x[i * stride + J]), acc[i][slot]);
    acc[i][slot + 1] = _mm512_fmadd_ps(qh, _mm512_set1_ps(x[i * stride + 4 + J]), acc[i][slot + 1]);
  }
}

// Tokens [m0, m0 + MT) x one row block, fp32 activations.
template <int MT, bool Asym>
void tile_f32(const Job& job, int64_t m0, int64_t b) {
  const PackedInt4& w = *job.w;
  const uint8_t* block = w.codes.data() + b * w.Kp * 8;
  const __m512 lut = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 yacc[MT];
  for (int i = 0; i < MT; ++i) yacc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.G; ++g) {
    constexpr int A = MT == 1 ? 8 : 2;
    __m512 acc[MT][A];
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < A; ++j) acc[i][j] = _mm512_setzero_ps();
    const uint8_t* wp = block + w.goff[g] * 8;
    const float* xp = job.xpad + m0 * w.Kp + w.goff[g];
    const int64_t chunks = (w.goff[g + 1] - w.goff[g]) / 8;
    for (int64_t c = 0; c < chunks; ++c) {
      const __m512i v = _mm512_load_si512(wp + c * 64);
      fma_inputs<MT, A, 0>(acc, v, lut, xp + c * 8, w.Kp);
      fma_inputs<MT, A, 1>(acc, v, lut, xp + c * 8, w.Kp);
      fma_inputs<MT, A, 2>(acc, v, lut, xp + c * 8, w.Kp);
      fma_inputs<MT, A, 3>(acc, v, lut, xp + c * 8, w.Kp);
    }
    const int64_t meta = (b * w.G + g) * kRows;
    const __m512 s = load_scales(w, meta);
    __m512 z = _mm512_set1_ps(8.0f);
    if (Asym)
      z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.zeros.data() + meta))));
    for (int i = 0; i < MT; ++i) {
      __m512 dot = acc[i][0];
      for (int j = 1; j < A; ++j) dot = _mm512_add_ps(dot, acc[i][j]);
      const __m512 t = _mm512_fnmadd_ps(z, _mm512_set1_ps(job.x_gsum[(m0 + i) * w.G + g]), dot);
      yacc[i] = _mm512_fmadd_ps(s, t, yacc[i]);
    }
  }
  for (int i = 0; i < MT; ++i) store_rows<false>(job, m0 + i, b, yacc[i], 0.0f);
}

// One token: decode_blocks. Else loops blocks outside (a block's weights stay in cache) and token tiles of 4 inside.
template <bool Asym>
void gemm_codes_impl(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  if (m0 == 0 && m1 == 1) {
    with_uniform_chunks(*job.w, [&](auto chunks) { decode_blocks<Asym, decltype(chunks)::value>(job, b0, b1); });
    return;
  }
  for (int64_t b = b0; b < b1; ++b) {
    int64_t m = m0;
    for (; m + 8 <= m1; m += 8) tile_codes<8, Asym>(job, m, b);
    switch (m1 - m) {
      case 7: tile_codes<7, Asym>(job, m, b); break;
      case 6: tile_codes<6, Asym>(job, m, b); break;
      case 5: tile_codes<5, Asym>(job, m, b); break;
      case 4: tile_codes<4, Asym>(job, m, b); break;
      case 3: tile_codes<3, Asym>(job, m, b); break;
      case 2: tile_codes<2, Asym>(job, m, b); break;
      case 1: tile_codes<1, Asym>(job, m, b); break;
      default: break;
    }
  }
}

template <bool Asym>
void gemm_f32_impl(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    int64_t m = m0;
    for (; m + 4 <= m1; m += 4) tile_f32<4, Asym>(job, m, b);
    switch (m1 - m) {
      case 3: tile_f32<3, Asym>(job, m, b); break;
      case 2: tile_f32<2, Asym>(job, m, b); break;
      case 1: tile_f32<1, Asym>(job, m, b); break;
      default: break;
    }
  }
}

void gemm_codes_avx512(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  (job.w->asymmetric ? gemm_codes_impl<true> : gemm_codes_impl<false>)(job, m0, m1, b0, b1);
}

void gemm_f32_avx512(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  (job.w->asymmetric ? gemm_f32_impl<true> : gemm_f32_impl<false>)(job, m0, m1, b0, b1);
}

}  // namespace

const Kernels& kernels_avx512() {
  static const Kernels k{quantize_avx512, gemm_codes_avx512, gemm_f32_avx512};
  return k;
}

}  // namespace spinquant::int4::detail
