// Helpers shared by the NEON and dotprod int4 kernels. Internal linkage on purpose: the two files
// are compiled for different architecture levels, so no inline copy may be merged between them.
#pragma once

#include <arm_neon.h>

#include "../int4_kernels.h"

namespace spinquant::int4::detail {

void quantize_neon(const float* x, int64_t K, int bits, float clip, uint8_t* codes, float* scale, int32_t* zero);
void gemm_f32_neon(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1);
void gemm_codes_dotprod(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1);

namespace {

// Scales of 4 rows starting at meta.
inline float32x4_t load_scales4(const PackedInt4& w, int64_t meta) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(w.scales.data() + meta)));
}

// Zero points of 4 rows starting at meta (8 for symmetric weights).
inline int32x4_t load_zeros4(const PackedInt4& w, int64_t meta, bool asym) {
  if (!asym) return vdupq_n_s32(8);
  const uint8_t* z = w.zeros.data() + meta;
  const uint32x4_t v = {z[0], z[1], z[2], z[3]};
  return vreinterpretq_s32_u32(v);
}

// y = acc, or fma(shift, corr, acc) on the quantized path; + bias; the block's valid rows stored.
inline void store_rows(const Job& job, int64_t m, int64_t b, const float32x4_t (&acc)[4], bool corr, float shift) {
  const PackedInt4& w = *job.w;
  float out[kRows];
  for (int q = 0; q < 4; ++q) {
    float32x4_t v = acc[q];
    if (corr) v = vfmaq_f32(v, vdupq_n_f32(shift), vld1q_f32(w.corr.data() + b * kRows + 4 * q));
    vst1q_f32(out + 4 * q, v);
  }
  const int rows = block_rows(w, b);
  float* y = job.y + m * w.N + b * kRows;
  for (int r = 0; r < rows; ++r) y[r] = job.bias != nullptr ? out[r] + job.bias[b * kRows + r] : out[r];
}

}  // namespace
}  // namespace spinquant::int4::detail
