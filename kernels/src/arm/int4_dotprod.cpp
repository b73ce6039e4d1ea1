// NEON dotprod (armv8.2-a+dotprod) int4 kernels: sdot by element, one 16-byte quarter of a tile
// (4 rows x 4 inputs) against 4 activation codes. sdot is signed x signed, so 8-bit activation
// codes are shifted by -128 and the group's exact sum restored with 128 * sum(q) (PackedInt4::qsum);
// codes of 7 bits or fewer already fit int8. Two tokens share each decoded tile.
#include <arm_neon.h>

#include "../int4_kernels.h"
#include "int4_neon.h"

namespace spinquant::int4::detail {
namespace {

inline int8x8_t load_acts(const uint8_t* a, bool shift) {
  const uint8x8_t v = vld1_u8(a);
  return vreinterpret_s8_u8(shift ? veor_u8(v, vdup_n_u8(0x80)) : v);
}

template <int MT, bool Asym, bool Shift>
void tile_codes(const Job& job, int64_t m0, int64_t b) {
  const PackedInt4& w = *job.w;
  const uint8_t* block = w.codes.data() + b * w.Kp * 8;
  const uint8x16_t nib = vdupq_n_u8(0x0f);
  float32x4_t yacc[MT][4];
  for (int i = 0; i < MT; ++i)
    for (int q = 0; q < 4; ++q) yacc[i][q] = vdupq_n_f32(0);
  for (int64_t g = 0; g < w.G; ++g) {
    int32x4_t acc[MT][4];
    for (int i = 0; i < MT; ++i)
      for (int q = 0; q < 4; ++q) acc[i][q] = vdupq_n_s32(0);
    const uint8_t* wp = block + w.goff[g] * 8;
    const uint8_t* ap = job.codes + m0 * w.Kp + w.goff[g];
    const int64_t chunks = (w.goff[g + 1] - w.goff[g]) / 8;
    for (int64_t c = 0; c < chunks; ++c) {
      int8x8_t a[MT];
      for (int i = 0; i < MT; ++i) a[i] = load_acts(ap + i * w.Kp + c * 8, Shift);
      for (int q = 0; q < 4; ++q) {
        const uint8x16_t v = vld1q_u8(wp + c * 64 + 16 * q);
        const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, nib));
        const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
        for (int i = 0; i < MT; ++i) {
          acc[i][q] = vdotq_lane_s32(acc[i][q], lo, a[i], 0);
          acc[i][q] = vdotq_lane_s32(acc[i][q], hi, a[i], 1);
        }
      }
    }
    const int64_t meta = (b * w.G + g) * kRows;
    for (int q = 0; q < 4; ++q) {
      const float32x4_t s = load_scales4(w, meta + 4 * q);
      const int32x4_t z = load_zeros4(w, meta + 4 * q, Asym);
      const int32x4_t restore = Shift ? vshlq_n_s32(vld1q_s32(w.qsum.data() + meta + 4 * q), 7) : vdupq_n_s32(0);
      for (int i = 0; i < MT; ++i) {
        const int32x4_t d = vaddq_s32(acc[i][q], restore);
        const int32x4_t isum = vmlsq_s32(d, z, vdupq_n_s32(job.a_gsum[(m0 + i) * w.G + g]));
        const float32x4_t ss = vmulq_f32(vdupq_n_f32(job.a_scale[m0 + i]), s);
        yacc[i][q] = vfmaq_f32(yacc[i][q], ss, vcvtq_f32_s32(isum));
      }
    }
  }
  for (int i = 0; i < MT; ++i)
    store_rows(job, m0 + i, b, yacc[i], true, -(job.a_scale[m0 + i] * static_cast<float>(job.a_zero[m0 + i])));
}

template <bool Asym, bool Shift>
void gemm_codes_impl(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    int64_t m = m0;
    for (; m + 2 <= m1; m += 2) tile_codes<2, Asym, Shift>(job, m, b);
    if (m < m1) tile_codes<1, Asym, Shift>(job, m, b);
  }
}

}  // namespace

void gemm_codes_dotprod(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  const bool asym = job.w->asymmetric, shift = job.act_bits == 8;
  if (asym)
    (shift ? gemm_codes_impl<true, true> : gemm_codes_impl<true, false>)(job, m0, m1, b0, b1);
  else
    (shift ? gemm_codes_impl<false, true> : gemm_codes_impl<false, false>)(job, m0, m1, b0, b1);
}

const Kernels& kernels_dotprod() {
  static const Kernels k{quantize_neon, gemm_codes_dotprod, gemm_f32_neon};
  return k;
}

}  // namespace spinquant::int4::detail
