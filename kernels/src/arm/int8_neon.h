// The NEON int8 linear, shared by the plain NEON and the dotprod files: activation codes are shifted to int8
// (a - 128, a flip of the top bit) so that signed products apply; the shift comes back exactly as
// 128 * rowsum. DOT16(acc, a, q) accumulates 16 products into 4 int32 lanes.
#pragma once

#include <arm_neon.h>

#include "../int8_kernels.h"

namespace spinquant::int8::detail {

template <int32x4_t (*Dot16)(int32x4_t, int8x16_t, int8x16_t)>
void gemm_neon(const Weight& w, const Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* y) {
  constexpr int kRows = 4;
  const int64_t body = w.K / 16 * 16;
  const uint8x16_t flip = vdupq_n_u8(0x80);
  auto tail = [&](const uint8_t* x, const int8_t* q) {
    int32_t s = 0;
    for (int64_t k = body; k < w.K; ++k) s += (static_cast<int32_t>(x[k]) - 128) * q[k];
    return s;
  };
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* x = a.codes + m * a.Kp;
    int64_t n = n0;
    for (; n < n1; n += kRows) {
      const int rows = n1 - n < kRows ? static_cast<int>(n1 - n) : kRows;
      const int8_t* q = w.codes + n * w.K;
      int32x4_t acc[kRows] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
      for (int64_t k = 0; k < body; k += 16) {
        const int8x16_t av = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x + k), flip));
        for (int r = 0; r < rows; ++r) acc[r] = Dot16(acc[r], av, vld1q_s8(q + r * w.K + k));
      }
      for (int r = 0; r < rows; ++r) {
        const int32_t dot = vaddvq_s32(acc[r]) + tail(x, q + r * w.K) + 128 * w.rowsum[n + r];
        y[m * w.N + n + r] = dequant(dot, a.zero[m], w.rowsum[n + r], a.scale[m], w.scales[n + r]);
      }
    }
  }
}

}  // namespace spinquant::int8::detail
