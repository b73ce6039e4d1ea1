// NEON i8mm (armv8.6-a) int4 prefill kernel: usmmla multiplies a 2-token x 8-input block of u8
// activation codes by a 2-row x 8-input block of s8 weights (32 MACs an instruction, twice sdot's),
// with no shift of the activations. zip1/zip2 on 32-bit lanes turn a tile quarter's low-nibble
// (inputs 0-3) and high-nibble (inputs 4-7) halves into those row pairs. Token pairs only: a
// leftover token (and decode, M = 1) runs the dotprod kernel, whose integer results are the same.
#include <arm_neon.h>

#include "../int4_kernels.h"
#include "int4_neon.h"

namespace spinquant::int4::detail {
namespace {

template <bool Asym>
void pair_codes(const Job& job, int64_t m0, int64_t b) {
  const PackedInt4& w = *job.w;
  const uint8_t* block = w.codes.data() + b * w.Kp * 8;
  const uint8x16_t nib = vdupq_n_u8(0x0f);
  float32x4_t yacc[2][4];
  for (int i = 0; i < 2; ++i)
    for (int q = 0; q < 4; ++q) yacc[i][q] = vdupq_n_f32(0);
  for (int64_t g = 0; g < w.G; ++g) {
    int32x4_t acc[8];  // per quarter q: [2q] rows (4q, 4q+1), [2q+1] rows (4q+2, 4q+3); lanes m0r, m0r', m1r, m1r'
    for (auto& a : acc) a = vdupq_n_s32(0);
    const uint8_t* wp = block + w.goff[g] * 8;
    const uint8_t* ap = job.codes + m0 * w.Kp + w.goff[g];
    const int64_t chunks = (w.goff[g + 1] - w.goff[g]) / 8;
    for (int64_t c = 0; c < chunks; ++c) {
      const uint8x16_t a = vcombine_u8(vld1_u8(ap + c * 8), vld1_u8(ap + w.Kp + c * 8));
      for (int q = 0; q < 4; ++q) {
        const uint8x16_t v = vld1q_u8(wp + c * 64 + 16 * q);
        const uint32x4_t lo = vreinterpretq_u32_u8(vandq_u8(v, nib));
        const uint32x4_t hi = vreinterpretq_u32_u8(vshrq_n_u8(v, 4));
        acc[2 * q] = vusmmlaq_s32(acc[2 * q], a, vreinterpretq_s8_u32(vzip1q_u32(lo, hi)));
        acc[2 * q + 1] = vusmmlaq_s32(acc[2 * q + 1], a, vreinterpretq_s8_u32(vzip2q_u32(lo, hi)));
      }
    }
    const int64_t meta = (b * w.G + g) * kRows;
    for (int q = 0; q < 4; ++q) {
      const int64x2_t r01 = vreinterpretq_s64_s32(acc[2 * q]), r23 = vreinterpretq_s64_s32(acc[2 * q + 1]);
      const int32x4_t d[2] = {vreinterpretq_s32_s64(vzip1q_s64(r01, r23)), vreinterpretq_s32_s64(vzip2q_s64(r01, r23))};
      const float32x4_t s = load_scales4(w, meta + 4 * q);
      const int32x4_t z = load_zeros4(w, meta + 4 * q, Asym);
      for (int i = 0; i < 2; ++i) {
        const int32x4_t isum = vmlsq_s32(d[i], z, vdupq_n_s32(job.a_gsum[(m0 + i) * w.G + g]));
        const float32x4_t ss = vmulq_f32(vdupq_n_f32(job.a_scale[m0 + i]), s);
        yacc[i][q] = vfmaq_f32(yacc[i][q], ss, vcvtq_f32_s32(isum));
      }
    }
  }
  for (int i = 0; i < 2; ++i)
    store_rows(job, m0 + i, b, yacc[i], true, -(job.a_scale[m0 + i] * static_cast<float>(job.a_zero[m0 + i])));
}

template <bool Asym>
void gemm_pairs(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t m = m0; m + 2 <= m1; m += 2) pair_codes<Asym>(job, m, b);
}

void gemm_codes_i8mm(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  const int64_t paired = m0 + (m1 - m0) / 2 * 2;
  (job.w->asymmetric ? gemm_pairs<true> : gemm_pairs<false>)(job, m0, paired, b0, b1);
  if (paired < m1) gemm_codes_dotprod(job, paired, m1, b0, b1);
}

}  // namespace

const Kernels& kernels_i8mm() {
  static const Kernels k{quantize_neon, gemm_codes_i8mm, gemm_f32_neon};
  return k;
}

}  // namespace spinquant::int4::detail
