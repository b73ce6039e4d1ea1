// NEON fast Walsh-Hadamard transform: 4 floats a vector (see hadamard_simd.h).
#include <arm_neon.h>

#include "../hadamard_simd.h"

namespace spinquant::detail {

namespace {

struct Neon {
  using T = float32x4_t;
  static constexpr int64_t W = 4;
  static constexpr int kMixRows = 4;
  static constexpr int kRadix = 16;
  static T load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, T v) { vst1q_f32(p, v); }
  static T add(T a, T b) { return vaddq_f32(a, b); }
  static T sub(T a, T b) { return vsubq_f32(a, b); }
  static T mul(T a, T b) { return vmulq_f32(a, b); }
  static T fma(T a, T b, T c) { return vfmaq_f32(c, a, b); }
  static T set1(float f) { return vdupq_n_f32(f); }
  static T zero() { return vdupq_n_f32(0.0f); }
  // y_i = x_i * sign_i + x_partner(i), sign +1 in the lower element of each pair (a + b) and -1 in the upper
  // (b * -1 + a = a - b): the product is exact, so the single rounding matches the reference's add / sub.
  static T stage(T x, T partner, T sign) { return vfmaq_f32(partner, x, sign); }
  static T inreg(T x) {
    static const float s1[4] = {1.0f, -1.0f, 1.0f, -1.0f};
    static const float s2[4] = {1.0f, 1.0f, -1.0f, -1.0f};
    x = stage(x, vrev64q_f32(x), vld1q_f32(s1));
    return stage(x, vextq_f32(x, x, 2), vld1q_f32(s2));
  }
};

}  // namespace

void hadamard_row_neon(float* x, const HadamardTransform& t, float* scratch) {
  if (!HadamardSimd<Neon>::row(x, t, scratch)) hadamard_row_ref(x, t, scratch);
}

void widen_f16_neon(const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(in + i))));
  widen_f16_ref(in + i, out + i, n - i);
}

// fcvtn rounds by FPCR: to nearest even unless the program changed the rounding mode.
void narrow_f16_neon(const float* in, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1_u16(out + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(in + i))));
  narrow_f16_ref(in + i, out + i, n - i);
}

}  // namespace spinquant::detail
