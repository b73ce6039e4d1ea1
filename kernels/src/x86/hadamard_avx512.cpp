// AVX-512 fast Walsh-Hadamard transform: 16 floats a vector (see hadamard_simd.h).
#include <immintrin.h>

#include "../hadamard_simd.h"

namespace spinquant::detail {

namespace {

struct Avx512 {
  using T = __m512;
  static constexpr int64_t W = 16;
  static constexpr int kMixRows = 4;
  static constexpr int kRadix = 16;
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T set1(float f) { return _mm512_set1_ps(f); }
  static T zero() { return _mm512_setzero_ps(); }
  // y_i = x_i * sign_i + x_partner(i), sign +1 in the lower element of each pair (a + b) and -1 in the upper
  // (b * -1 + a = a - b): the product is exact, so the single rounding matches the reference's add / sub.
  static T stage(T x, T partner, __mmask16 upper) {
    return _mm512_fmadd_ps(x, _mm512_mask_blend_ps(upper, _mm512_set1_ps(1.0f), _mm512_set1_ps(-1.0f)), partner);
  }
  // Full-mask forms of the permutes: GCC 12 warns about the undefined source of the plain ones.
  static T inreg(T x) {
    x = stage(x, _mm512_mask_permute_ps(x, 0xFFFF, x, 0xB1), 0xAAAA);
    x = stage(x, _mm512_mask_permute_ps(x, 0xFFFF, x, 0x4E), 0xCCCC);
    x = stage(x, _mm512_mask_shuffle_f32x4(x, 0xFFFF, x, x, _MM_SHUFFLE(2, 3, 0, 1)), 0xF0F0);
    return stage(x, _mm512_mask_shuffle_f32x4(x, 0xFFFF, x, x, _MM_SHUFFLE(1, 0, 3, 2)), 0xFF00);
  }
};

}  // namespace

void hadamard_row_avx512(float* x, const HadamardTransform& t, float* scratch) {
  if (!HadamardSimd<Avx512>::row(x, t, scratch)) hadamard_row_ref(x, t, scratch);
}

}  // namespace spinquant::detail
