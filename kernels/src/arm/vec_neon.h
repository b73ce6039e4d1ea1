// NEON vector traits (4 floats) shared by this ISA's kernel files (attention_simd.h and elementwise_simd.h say what each
// member does). Included only by files compiled with this ISA's flags; the anonymous namespace keeps every
// template instantiated with these traits local to its file (no cross-ISA merging by the linker).
#pragma once

#include <arm_neon.h>

#include <cstring>

#include <cstdint>

namespace spinquant::detail {
namespace {

struct Neon {
  using T = float32x4_t;
  static constexpr int64_t W = 4;
  static constexpr int kScoreHeads = 4, kScoreTokens = 4;  // accumulators: 16 of 32 registers
  static constexpr int kValueHeads = 4;  // x 4 vectors of accumulators
  static T load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, T v) { vst1q_f32(p, v); }
  static T zero() { return vdupq_n_f32(0.0f); }
  static T set1(float f) { return vdupq_n_f32(f); }
  static T add(T a, T b) { return vaddq_f32(a, b); }
  static T sub(T a, T b) { return vsubq_f32(a, b); }
  static T mul(T a, T b) { return vmulq_f32(a, b); }
  static T fma(T a, T b, T c) { return vfmaq_f32(c, a, b); }
  static T max(T a, T b) { return vmaxq_f32(a, b); }
  static T min(T a, T b) { return vminq_f32(a, b); }
  static T div(T a, T b) { return vdivq_f32(a, b); }
  static T round(T x) { return vrndnq_f32(x); }
  static T pow2(T n) {
    const int32x4_t e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
    return vreinterpretq_f32_s32(vshlq_n_s32(e, 23));
  }
  static float hsum(T v) { return vaddvq_f32(v); }
  static float hmax(T v) { return vmaxvq_f32(v); }
  static void hsum4(const T* a, float* out) {
    vst1q_f32(out, vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3])));
  }
  // 8 codes from 4 bytes: low nibbles (even channels) and high nibbles (odd channels).
  static void codes4_pair(const uint8_t* p, T& lo, T& hi) {
    uint32_t w;
    std::memcpy(&w, p, 4);
    const uint32x4_t x = vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(w)))));
    lo = vcvtq_f32_u32(vandq_u32(x, vdupq_n_u32(0xF)));
    hi = vcvtq_f32_u32(vshrq_n_u32(x, 4));
  }
  static T codes8(const uint8_t* p) {
    uint32_t w;
    std::memcpy(&w, p, 4);
    const uint8x8_t b = vreinterpret_u8_u32(vdup_n_u32(w));
    return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))));
  }
};

}  // namespace
}  // namespace spinquant::detail
