// NEON fast Walsh-Hadamard transform: 4 floats a vector (see hadamard_simd.h).
#include <arm_neon.h>

#include "../hadamard_simd.h"

namespace spinquant::detail {

namespace {

struct Neon {
  using T = float32x4_t;
  static constexpr int64_t W = 4;
  static T load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, T v) { vst1q_f32(p, v); }
  static T add(T a, T b) { return vaddq_f32(a, b); }
  static T sub(T a, T b) { return vsubq_f32(a, b); }
  static T mul(T a, T b) { return vmulq_f32(a, b); }
  static T xor_bits(T a, T b) {
    return vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(a), vreinterpretq_u32_f32(b)));
  }
  static T set1(float f) { return vdupq_n_f32(f); }
  static T set1_bits(uint32_t u) { return vreinterpretq_f32_u32(vdupq_n_u32(u)); }
  static T zero() { return vdupq_n_f32(0.0f); }
  // y_i = x_partner(i) + (+-x_i): +x_i in the lower element of each pair (a + b), -x_i in the upper (a - b).
  static T stage(T x, T partner, uint32x4_t neg_upper) {
    return vaddq_f32(partner, vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(x), neg_upper)));
  }
  static T inreg(T x) {
    static const uint32_t s1[4] = {0, 0x80000000u, 0, 0x80000000u};
    static const uint32_t s2[4] = {0, 0, 0x80000000u, 0x80000000u};
    x = stage(x, vrev64q_f32(x), vld1q_u32(s1));
    return stage(x, vextq_f32(x, x, 2), vld1q_u32(s2));
  }
};

}  // namespace

void hadamard_row_neon(float* x, const HadamardTransform& t, float* scratch) {
  if (!HadamardSimd<Neon>::row(x, t, scratch)) hadamard_row_ref(x, t, scratch);
}

}  // namespace spinquant::detail
