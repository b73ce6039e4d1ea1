// AVX2 fast Walsh-Hadamard transform: 8 floats a vector (see hadamard_simd.h).
#include <immintrin.h>

#include "../hadamard_simd.h"

namespace spinquant::detail {

namespace {

struct Avx2 {
  using T = __m256;
  static constexpr int64_t W = 8;
  static constexpr int kMixRows = 2;
  static constexpr int kRadix = 8;
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T set1(float f) { return _mm256_set1_ps(f); }
  static T zero() { return _mm256_setzero_ps(); }
  // y_i = x_i * sign_i + x_partner(i), sign +1 in the lower element of each pair (a + b) and -1 in the upper
  // (b * -1 + a = a - b): the product is exact, so the single rounding matches the reference's add / sub.
  static T stage(T x, T partner, T sign) { return _mm256_fmadd_ps(x, sign, partner); }
  static T inreg(T x) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-1.0f);
    x = stage(x, _mm256_permute_ps(x, 0xB1), _mm256_blend_ps(one, neg, 0xAA));
    x = stage(x, _mm256_permute_ps(x, 0x4E), _mm256_blend_ps(one, neg, 0xCC));
    return stage(x, _mm256_permute2f128_ps(x, x, 0x01), _mm256_blend_ps(one, neg, 0xF0));
  }
};

}  // namespace

void hadamard_row_avx2(float* x, const HadamardTransform& t, float* scratch) {
  if (!HadamardSimd<Avx2>::row(x, t, scratch)) hadamard_row_ref(x, t, scratch);
}

// F16C (part of this file's flags; AVX-512 uses it too).
void widen_f16_avx2(const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  widen_f16_ref(in + i, out + i, n - i);
}

void narrow_f16_avx2(const float* in, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  narrow_f16_ref(in + i, out + i, n - i);
}

}  // namespace spinquant::detail
