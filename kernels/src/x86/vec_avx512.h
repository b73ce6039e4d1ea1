// AVX-512 vector traits (16 floats) shared by this ISA's kernel files (attention_simd.h and elementwise_simd.h say what each
// member does). Included only by files compiled with this ISA's flags; the anonymous namespace keeps every
// template instantiated with these traits local to its file (no cross-ISA merging by the linker).
#pragma once

#include <immintrin.h>

#include <cstdint>

// GCC 12 reports its own AVX-512 headers' self-initialized _mm512_undefined_* once inlined (a known
// false positive, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace spinquant::detail {
namespace {

struct Avx512 {
  using T = __m512;
  static constexpr int64_t W = 16;
  static constexpr int kScoreHeads = 4, kScoreTokens = 4;  // accumulators: 16 of 32 registers
  static constexpr int kValueHeads = 4;  // x 4 vectors of accumulators
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float f) { return _mm512_set1_ps(f); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  // Full-mask forms here and below: GCC 12 warns about the undefined source of the plain intrinsics.
  static T max(T a, T b) { return _mm512_mask_max_ps(a, 0xFFFF, a, b); }
  static T min(T a, T b) { return _mm512_mask_min_ps(a, 0xFFFF, a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T round(T x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T pow2(T n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static __m256 high(T v) {
    return _mm256_castpd_ps(_mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xF, _mm512_castps_pd(v), 1));
  }
  static float hsum(T v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), high(v));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  // Four vectors' sums: halves added, then two rounds of pairwise adds and the two 128-bit halves.
  static void hsum4(const T* a, float* out) {
    __m256 h[4];
    for (int i = 0; i < 4; ++i) h[i] = _mm256_add_ps(_mm512_castps512_ps256(a[i]), high(a[i]));
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
  }
  static float hmax(T v) {
    const __m256 h = _mm256_max_ps(_mm512_castps512_ps256(v), high(v));
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  // 32 codes from 16 bytes: low nibbles (even channels) and high nibbles (odd channels).
  static void codes4_pair(const uint8_t* p, T& lo, T& hi) {
    const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    lo = _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32(0xF)));
    hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(x, 4));
  }
  static T codes8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
};

}  // namespace
}  // namespace spinquant::detail
