// NEON (armv8-a) int4 kernels. A 64-byte tile is four 16-byte quarters of 4 rows x 4 inputs;
// umull/umlal multiply masked nibbles by u8 activation codes into u16 (<= 2 * 255 * 15), uadalp
// widens pairs into u32, and one addp per group joins them into one lane per row.
#include <arm_neon.h>

#include <cmath>

#include "../int4_kernels.h"
#include "int4_neon.h"

namespace spinquant::int4::detail {

void quantize_neon(const float* x, int64_t K, int bits, float clip, uint8_t* codes, float* scale, int32_t* zero) {
  float32x4_t vlo = vdupq_n_f32(x[0]), vhi = vlo;
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const float32x4_t v = vld1q_f32(x + k);
    vlo = vminq_f32(vlo, v);
    vhi = vmaxq_f32(vhi, v);
  }
  float lo = vminvq_f32(vlo), hi = vmaxvq_f32(vhi);
  for (int64_t t = k; t < K; ++t) {
    lo = x[t] < lo ? x[t] : lo;
    hi = x[t] > hi ? x[t] : hi;
  }
  float s, fz;
  act_params(lo, hi, bits, clip, &s, zero, &fz);
  *scale = s;
  const float qmax = static_cast<float>((1 << bits) - 1);
  const float32x4_t vs = vdupq_n_f32(s), vz = vdupq_n_f32(fz), vmax = vdupq_n_f32(qmax), v0 = vdupq_n_f32(0.0f);
  for (k = 0; k + 8 <= K; k += 8) {
    float32x4_t q0 = vaddq_f32(vrndnq_f32(vdivq_f32(vld1q_f32(x + k), vs)), vz);
    float32x4_t q1 = vaddq_f32(vrndnq_f32(vdivq_f32(vld1q_f32(x + k + 4), vs)), vz);
    q0 = vminq_f32(vmaxq_f32(q0, v0), vmax);
    q1 = vminq_f32(vmaxq_f32(q1, v0), vmax);
    const uint16x8_t u16 = vcombine_u16(vmovn_u32(vcvtq_u32_f32(q0)), vmovn_u32(vcvtq_u32_f32(q1)));
    vst1_u8(codes + k, vmovn_u16(u16));
  }
  for (; k < K; ++k) {
    float q = std::nearbyint(x[k] / s) + fz;
    q = q > 0.0f ? (q < qmax ? q : qmax) : 0.0f;  // nan -> 0, as the SIMD paths do
    codes[k] = static_cast<uint8_t>(q);
  }
}

namespace {

// Codes path for one token and one block.
template <bool Asym>
void row_codes(const Job& job, int64_t m, int64_t b) {
  const PackedInt4& w = *job.w;
  const uint8_t* block = w.codes.data() + b * w.Kp * 8;
  const uint8x16_t nib = vdupq_n_u8(0x0f);
  float32x4_t yacc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
  const float sa = job.a_scale[m];
  for (int64_t g = 0; g < w.G; ++g) {
    uint32x4_t acc_lo[4], acc_hi[4];  // rows (4q, 4q+1) and (4q+2, 4q+3), pair sums
    for (int q = 0; q < 4; ++q) acc_lo[q] = acc_hi[q] = vdupq_n_u32(0);
    const uint8_t* wp = block + w.goff[g] * 8;
    const uint8_t* ap = job.codes + m * w.Kp + w.goff[g];
    const int64_t chunks = (w.goff[g + 1] - w.goff[g]) / 8;
    for (int64_t c = 0; c < chunks; ++c) {
      const uint8x16_t a03 = vreinterpretq_u8_u32(vdupq_n_u32(load_u32(ap + c * 8)));
      const uint8x16_t a47 = vreinterpretq_u8_u32(vdupq_n_u32(load_u32(ap + c * 8 + 4)));
      for (int q = 0; q < 4; ++q) {
        const uint8x16_t v = vld1q_u8(wp + c * 64 + 16 * q);
        const uint8x16_t lo = vandq_u8(v, nib), hi = vshrq_n_u8(v, 4);
        uint16x8_t p0 = vmull_u8(vget_low_u8(lo), vget_low_u8(a03));
        p0 = vmlal_u8(p0, vget_low_u8(hi), vget_low_u8(a47));
        uint16x8_t p1 = vmull_high_u8(lo, a03);
        p1 = vmlal_high_u8(p1, hi, a47);
        acc_lo[q] = vpadalq_u16(acc_lo[q], p0);
        acc_hi[q] = vpadalq_u16(acc_hi[q], p1);
      }
    }
    const int64_t meta = (b * w.G + g) * kRows;
    const int32x4_t asum = vdupq_n_s32(job.a_gsum[m * w.G + g]);
    for (int q = 0; q < 4; ++q) {
      const int32x4_t d = vreinterpretq_s32_u32(vpaddq_u32(acc_lo[q], acc_hi[q]));
      const int32x4_t isum = vmlsq_s32(d, load_zeros4(w, meta + 4 * q, Asym), asum);
      yacc[q] = vfmaq_f32(yacc[q], vmulq_f32(vdupq_n_f32(sa), load_scales4(w, meta + 4 * q)), vcvtq_f32_s32(isum));
    }
  }
  store_rows(job, m, b, yacc, true, -(sa * static_cast<float>(job.a_zero[m])));
}

template <int J>
inline float32x4_t lane_codes(uint8x16_t tile) {
  uint32x4_t v = vreinterpretq_u32_u8(tile);
  if constexpr (J > 0) v = vshrq_n_u32(v, 8 * J);  // clang checks the shift's range even in a branch not taken
  return vcvtq_f32_u32(J == 3 ? v : vandq_u32(v, vdupq_n_u32(0xff)));
}

template <int J>
inline void fma_inputs(float32x4_t& acc_lo, float32x4_t& acc_hi, uint8x16_t lo, uint8x16_t hi, const float* x) {
  acc_lo = vfmaq_n_f32(acc_lo, lane_codes<J>(lo), x[J]);
  acc_hi = vfmaq_n_f32(acc_hi, lane_codes<J>(hi), x[4 + J]);
}

template <bool Asym>
void row_f32(const Job& job, int64_t m, int64_t b) {
  const PackedInt4& w = *job.w;
  const uint8_t* block = w.codes.data() + b * w.Kp * 8;
  const uint8x16_t nib = vdupq_n_u8(0x0f);
  float32x4_t yacc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
  for (int64_t g = 0; g < w.G; ++g) {
    float32x4_t acc_lo[4], acc_hi[4];
    for (int q = 0; q < 4; ++q) acc_lo[q] = acc_hi[q] = vdupq_n_f32(0);
    const uint8_t* wp = block + w.goff[g] * 8;
    const float* xp = job.xpad + m * w.Kp + w.goff[g];
    const int64_t chunks = (w.goff[g + 1] - w.goff[g]) / 8;
    for (int64_t c = 0; c < chunks; ++c) {
      for (int q = 0; q < 4; ++q) {
        const uint8x16_t v = vld1q_u8(wp + c * 64 + 16 * q);
        const uint8x16_t lo = vandq_u8(v, nib), hi = vshrq_n_u8(v, 4);
        fma_inputs<0>(acc_lo[q], acc_hi[q], lo, hi, xp + c * 8);
        fma_inputs<1>(acc_lo[q], acc_hi[q], lo, hi, xp + c * 8);
        fma_inputs<2>(acc_lo[q], acc_hi[q], lo, hi, xp + c * 8);
        fma_inputs<3>(acc_lo[q], acc_hi[q], lo, hi, xp + c * 8);
      }
    }
    const int64_t meta = (b * w.G + g) * kRows;
    const float32x4_t xs = vdupq_n_f32(job.x_gsum[m * w.G + g]);
    for (int q = 0; q < 4; ++q) {
      const float32x4_t z = vcvtq_f32_s32(load_zeros4(w, meta + 4 * q, Asym));
      const float32x4_t t = vfmsq_f32(vaddq_f32(acc_lo[q], acc_hi[q]), z, xs);
      yacc[q] = vfmaq_f32(yacc[q], load_scales4(w, meta + 4 * q), t);
    }
  }
  store_rows(job, m, b, yacc, false, 0.0f);
}

template <bool Asym>
void gemm_codes_impl(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t m = m0; m < m1; ++m) row_codes<Asym>(job, m, b);
}

template <bool Asym>
void gemm_f32_impl(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t m = m0; m < m1; ++m) row_f32<Asym>(job, m, b);
}

void gemm_codes_neon(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  (job.w->asymmetric ? gemm_codes_impl<true> : gemm_codes_impl<false>)(job, m0, m1, b0, b1);
}

}  // namespace

void gemm_f32_neon(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  (job.w->asymmetric ? gemm_f32_impl<true> : gemm_f32_impl<false>)(job, m0, m1, b0, b1);
}

const Kernels& kernels_neon() {
  static const Kernels k{quantize_neon, gemm_codes_neon, gemm_f32_neon};
  return k;
}

}  // namespace spinquant::int4::detail
