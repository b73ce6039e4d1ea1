// AVX2 int4 kernels. A 64-byte tile is two 8-row halves; vpmaddubsw multiplies u8 activation codes
// by the masked s8 nibbles (pair sums <= 2 * 255 * 15, no saturation), vpmaddwd widens to int32.
#include <immintrin.h>

#include <cmath>

#include "../int4_kernels.h"

namespace spinquant::int4::detail {
namespace {

float hmin(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps(m, m, 1)));
}

float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

void quantize_avx2(const float* x, int64_t K, int bits, float clip, uint8_t* codes, float* scale, int32_t* zero) {
  __m256 vlo = _mm256_set1_ps(x[0]), vhi = vlo;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 v = _mm256_loadu_ps(x + k);
    vlo = _mm256_min_ps(vlo, v);
    vhi = _mm256_max_ps(vhi, v);
  }
  float lo = hmin(vlo), hi = hmax(vhi);
  for (int64_t t = k; t < K; ++t) {
    lo = x[t] < lo ? x[t] : lo;
    hi = x[t] > hi ? x[t] : hi;
  }
  float s, fz;
  act_params(lo, hi, bits, clip, &s, zero, &fz);
  *scale = s;
  const float qmax = static_cast<float>((1 << bits) - 1);
  const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(fz), vmax = _mm256_set1_ps(qmax);
  for (k = 0; k + 8 <= K; k += 8) {
    __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q, vz), _mm256_setzero_ps()), vmax);
    const __m256i i32 = _mm256_cvttps_epi32(q);
    const __m128i i16 = _mm_packus_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + k), _mm_packus_epi16(i16, i16));
  }
  for (; k < K; ++k) {
    float q = std::nearbyint(x[k] / s) + fz;
    q = q > 0.0f ? (q < qmax ? q : qmax) : 0.0f;  // nan -> 0, as the SIMD paths do
    codes[k] = static_cast<uint8_t>(q);
  }
}

struct Half2 {
  __m256 lo, hi;  // rows 0-7, 8-15
};

inline Half2 load_scales(const PackedInt4& w, int64_t meta) {
  const __m128i* p = reinterpret_cast<const __m128i*>(w.scales.data() + meta);
  return {_mm256_cvtph_ps(_mm_loadu_si128(p)), _mm256_cvtph_ps(_mm_loadu_si128(p + 1))};
}

inline __m256i load_zeros8(const PackedInt4& w, int64_t meta) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.zeros.data() + meta)));
}

// One group's weight scales and zero points (8 when symmetric) for a row block: add() folds a token's integer
// dot products acc0 (rows 0-7) and acc1 (rows 8-15) into yacc as sa * s * (acc - z * asum).
template <bool Asym>
struct GroupScale {
  Half2 s;
  __m256i z0, z1;

  GroupScale(const PackedInt4& w, int64_t meta) : s(load_scales(w, meta)) {
    z0 = z1 = _mm256_set1_epi32(8);
    if (Asym) {
      z0 = load_zeros8(w, meta);
      z1 = load_zeros8(w, meta + 8);
    }
  }

  void add(__m256 sa, int32_t asum, __m256i acc0, __m256i acc1, Half2& yacc) const {
    const __m256i a = _mm256_set1_epi32(asum);
    const __m256i i0 = _mm256_sub_epi32(acc0, _mm256_mullo_epi32(z0, a));
    const __m256i i1 = _mm256_sub_epi32(acc1, _mm256_mullo_epi32(z1, a));
    yacc.lo = _mm256_fmadd_ps(_mm256_mul_ps(sa, s.lo), _mm256_cvtepi32_ps(i0), yacc.lo);
    yacc.hi = _mm256_fmadd_ps(_mm256_mul_ps(sa, s.hi), _mm256_cvtepi32_ps(i1), yacc.hi);
  }
};

// y = acc, or fma(shift, corr, acc) on the quantized path; + bias; the block's valid rows stored.
template <bool Corr>
inline void store_rows(const Job& job, int64_t m, int64_t b, Half2 acc, float shift) {
  const PackedInt4& w = *job.w;
  alignas(32) float out[kRows];
  if (Corr) {
    const __m256 sh = _mm256_set1_ps(shift);
    acc.lo = _mm256_fmadd_ps(sh, _mm256_loadu_ps(w.corr.data() + b * kRows), acc.lo);
    acc.hi = _mm256_fmadd_ps(sh, _mm256_loadu_ps(w.corr.data() + b * kRows + 8), acc.hi);
  }
  _mm256_store_ps(out, acc.lo);
  _mm256_store_ps(out + 8, acc.hi);
  const int rows = block_rows(w, b);
  float* y = job.y + m * w.N + b * kRows;
  for (int r = 0; r < rows; ++r) y[r] = job.bias != nullptr ? out[r] + job.bias[b * kRows + r] : out[r];
}

template <int MT, bool Asym>
void tile_codes(const Job& job, int64_t m0, int64_t b) {
  const PackedInt4& w = *job.w;
  const uint8_t* block = w.codes.data() + b * w.Kp * 8;
  const __m256i nib = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  Half2 yacc[MT];
  for (int i = 0; i < MT; ++i) yacc[i] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t g = 0; g < w.G; ++g) {
    __m256i acc[MT][2];
    for (int i = 0; i < MT; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    const uint8_t* wp = block + w.goff[g] * 8;
    const uint8_t* ap = job.codes + m0 * w.Kp + w.goff[g];
    const int64_t chunks = (w.goff[g + 1] - w.goff[g]) / 8;
    for (int64_t c = 0; c < chunks; ++c) {
      const __m256i v0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wp + c * 64));
      const __m256i v1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wp + c * 64 + 32));
      const __m256i lo0 = _mm256_and_si256(v0, nib), hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), nib);
      const __m256i lo1 = _mm256_and_si256(v1, nib), hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), nib);
      for (int i = 0; i < MT; ++i) {
        const uint8_t* a = ap + i * w.Kp + c * 8;
        const __m256i a03 = _mm256_set1_epi32(static_cast<int>(load_u32(a)));
        const __m256i a47 = _mm256_set1_epi32(static_cast<int>(load_u32(a + 4)));
        const __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(a03, lo0), _mm256_maddubs_epi16(a47, hi0));
        const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(a03, lo1), _mm256_maddubs_epi16(a47, hi1));
        acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(p0, ones));
        acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(p1, ones));
      }
    }
    const GroupScale<Asym> gs(w, (b * w.G + g) * kRows);
    for (int i = 0; i < MT; ++i)
      gs.add(_mm256_set1_ps(job.a_scale[m0 + i]), job.a_gsum[(m0 + i) * w.G + g], acc[i][0], acc[i][1], yacc[i]);
  }
  for (int i = 0; i < MT; ++i)
    store_rows<true>(job, m0 + i, b, yacc[i], -(job.a_scale[m0 + i] * static_cast<float>(job.a_zero[m0 + i])));
}

// The int16 sums of one 64-byte line at p (16 rows x 8 inputs) with the 8 activation codes at a, prefetching
// kPrefetchBytes ahead: s0 for rows 0-7, s1 for rows 8-15, each lane in [0, 4 * 255 * 15] (u8 codes times nibbles),
// so two lines' sums still fit in int16.
inline void line_sums(const uint8_t* p, const uint8_t* a, __m256i nib, __m256i& s0, __m256i& s1) {
  _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
  const __m256i v0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i v1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32));
  const __m256i a03 = _mm256_set1_epi32(static_cast<int>(load_u32(a)));
  const __m256i a47 = _mm256_set1_epi32(static_cast<int>(load_u32(a + 4)));
  s0 = _mm256_add_epi16(_mm256_maddubs_epi16(a03, _mm256_and_si256(v0, nib)),
                        _mm256_maddubs_epi16(a47, _mm256_and_si256(_mm256_srli_epi16(v0, 4), nib)));
  s1 = _mm256_add_epi16(_mm256_maddubs_epi16(a03, _mm256_and_si256(v1, nib)),
                        _mm256_maddubs_epi16(a47, _mm256_and_si256(_mm256_srli_epi16(v1, 4), nib)));
}

// One token (decode) over row blocks [b0, b1): tile_codes<1>'s arithmetic, bit for bit (integer sums in another
// order), with two lines' int16 sums added before they widen (one vpmaddwd and add a pair of lines, not a line),
// the invariants hoisted, and with C > 0 (every group C 64-byte chunks, no padding) the group's chunks unrolled.
template <bool Asym, int C>
void decode_blocks(const Job& job, int64_t b0, int64_t b1) {
  const PackedInt4& w = *job.w;
  const __m256i nib = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  const __m256 sa = _mm256_set1_ps(job.a_scale[0]);
  const float shift = -(job.a_scale[0] * static_cast<float>(job.a_zero[0]));
  const int64_t* goff = w.goff.data();
  const auto widen = [&](__m256i s) { return _mm256_madd_epi16(s, ones); };
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* block = w.codes.data() + b * w.Kp * 8;
    Half2 yacc = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t g = 0; g < w.G; ++g) {
      __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
      const uint8_t* p = block + (C > 0 ? g * C * 64 : goff[g] * 8);
      const uint8_t* a = job.codes + (C > 0 ? g * C * 8 : goff[g]);
      const uint8_t* const end = C > 0 ? p + C * 64 : block + goff[g + 1] * 8;
      if (C == 0 && ((end - p) & 64)) {  // an odd number of chunks: the first one alone
        __m256i s0, s1;
        line_sums(p, a, nib, s0, s1);
        acc0 = widen(s0);
        acc1 = widen(s1);
        p += 64;
        a += 8;
      }
#pragma GCC unroll 8
      for (; p < end; p += 128, a += 16) {
        __m256i s0, s1, t0, t1;
        line_sums(p, a, nib, s0, s1);
        line_sums(p + 64, a + 8, nib, t0, t1);
        acc0 = _mm256_add_epi32(acc0, widen(_mm256_add_epi16(s0, t0)));
        acc1 = _mm256_add_epi32(acc1, widen(_mm256_add_epi16(s1, t1)));
      }
      GroupScale<Asym>(w, (b * w.G + g) * kRows).add(sa, job.a_gsum[g], acc0, acc1, yacc);
    }
    store_rows<true>(job, 0, b, yacc, shift);
  }
}

template <int J>
inline __m256 lane_codes(__m256i tile) {
  const __m256i v = J == 0 ? tile : _mm256_srli_epi32(tile, 8 * J);
  return _mm256_cvtepi32_ps(J == 3 ? v : _mm256_and_si256(v, _mm256_set1_epi32(0xff)));
}

// acc[0..1] rows 0-7 (low / high nibble inputs), acc[2..3] rows 8-15.
template <int J>
inline void fma_inputs(__m256 (&acc)[4], __m256i lo0, __m256i hi0, __m256i lo1, __m256i hi1, const float* x) {
  const __m256 xl = _mm256_set1_ps(x[J]), xh = _mm256_set1_ps(x[4 + J]);
  acc[0] = _mm256_fmadd_ps(lane_codes<J>(lo0), xl, acc[0]);
  acc[1] = _mm256_fmadd_ps(lane_codes<J>(hi0), xh, acc[1]);
  acc[2] = _mm256_fmadd_ps(lane_codes<J>(lo1), xl, acc[2]);
  acc[3] = _mm256_fmadd_ps(lane_codes<J>(hi1), xh, acc[3]);
}

template <bool Asym>
void row_f32(const Job& job, int64_t m, int64_t b) {
  const PackedInt4& w = *job.w;
  const uint8_t* block = w.codes.data() + b * w.Kp * 8;
  const __m256i nib = _mm256_set1_epi8(0x0f);
  Half2 yacc = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t g = 0; g < w.G; ++g) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const uint8_t* wp = block + w.goff[g] * 8;
    const float* xp = job.xpad + m * w.Kp + w.goff[g];
    const int64_t chunks = (w.goff[g + 1] - w.goff[g]) / 8;
    for (int64_t c = 0; c < chunks; ++c) {
      const __m256i v0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wp + c * 64));
      const __m256i v1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wp + c * 64 + 32));
      const __m256i lo0 = _mm256_and_si256(v0, nib), hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), nib);
      const __m256i lo1 = _mm256_and_si256(v1, nib), hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), nib);
      fma_inputs<0>(acc, lo0, hi0, lo1, hi1, xp + c * 8);
      fma_inputs<1>(acc, lo0, hi0, lo1, hi1, xp + c * 8);
      fma_inputs<2>(acc, lo0, hi0, lo1, hi1, xp + c * 8);
      fma_inputs<3>(acc, lo0, hi0, lo1, hi1, xp + c * 8);
    }
    const int64_t meta = (b * w.G + g) * kRows;
    const Half2 s = load_scales(w, meta);
    __m256 z0 = _mm256_set1_ps(8.0f), z1 = z0;
    if (Asym) {
      z0 = _mm256_cvtepi32_ps(load_zeros8(w, meta));
      z1 = _mm256_cvtepi32_ps(load_zeros8(w, meta + 8));
    }
    const __m256 xs = _mm256_set1_ps(job.x_gsum[m * w.G + g]);
    yacc.lo = _mm256_fmadd_ps(s.lo, _mm256_fnmadd_ps(z0, xs, _mm256_add_ps(acc[0], acc[1])), yacc.lo);
    yacc.hi = _mm256_fmadd_ps(s.hi, _mm256_fnmadd_ps(z1, xs, _mm256_add_ps(acc[2], acc[3])), yacc.hi);
  }
  store_rows<false>(job, m, b, yacc, 0.0f);
}

template <bool Asym>
void gemm_codes_impl(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  if (m0 == 0 && m1 == 1) {
    with_uniform_chunks(*job.w, [&](auto chunks) { decode_blocks<Asym, decltype(chunks)::value>(job, b0, b1); });
    return;
  }
  for (int64_t b = b0; b < b1; ++b) {
    int64_t m = m0;
    for (; m + 2 <= m1; m += 2) tile_codes<2, Asym>(job, m, b);
    if (m < m1) tile_codes<1, Asym>(job, m, b);
  }
}

template <bool Asym>
void gemm_f32_impl(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t m = m0; m < m1; ++m) row_f32<Asym>(job, m, b);
}

void gemm_codes_avx2(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  (job.w->asymmetric ? gemm_codes_impl<true> : gemm_codes_impl<false>)(job, m0, m1, b0, b1);
}

void gemm_f32_avx2(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  (job.w->asymmetric ? gemm_f32_impl<true> : gemm_f32_impl<false>)(job, m0, m1, b0, b1);
}

}  // namespace

const Kernels& kernels_avx2() {
  static const Kernels k{quantize_avx2, gemm_codes_avx2, gemm_f32_avx2};
  return k;
}

}  // namespace spinquant::int4::detail
