// AVX2 fast Walsh-Hadamard transform: 8 floats a vector (see hadamard_simd.h).
#include <immintrin.h>

#include "../hadamard_simd.h"

namespace spinquant::detail {

namespace {

struct Avx2 {
  using T = __m256;
  static constexpr int64_t W = 8;
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T xor_bits(T a, T b) { return _mm256_xor_ps(a, b); }
  static T set1(float f) { return _mm256_set1_ps(f); }
  static T set1_bits(uint32_t u) { return _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(u))); }
  static T zero() { return _mm256_setzero_ps(); }
  // y_i = x_partner(i) + (+-x_i): +x_i in the lower element of each pair (a + b), -x_i in the upper (a - b).
  static T stage(T x, T partner, T neg_upper) { return _mm256_add_ps(partner, _mm256_xor_ps(x, neg_upper)); }
  static T inreg(T x) {
    const __m256 s = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
    const __m256 z = _mm256_setzero_ps();
    x = stage(x, _mm256_permute_ps(x, 0xB1), _mm256_blend_ps(z, s, 0xAA));
    x = stage(x, _mm256_permute_ps(x, 0x4E), _mm256_blend_ps(z, s, 0xCC));
    return stage(x, _mm256_permute2f128_ps(x, x, 0x01), _mm256_blend_ps(z, s, 0xF0));
  }
};

}  // namespace

void hadamard_row_avx2(float* x, const HadamardTransform& t, float* scratch) {
  if (!HadamardSimd<Avx2>::row(x, t, scratch)) hadamard_row_ref(x, t, scratch);
}

}  // namespace spinquant::detail
