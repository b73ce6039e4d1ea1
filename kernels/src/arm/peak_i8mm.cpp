// int8_peak's arm64 i8mm loop: smmla, a 2x8 by 8x2 s8 matrix product (32 products) into 4 int32 lanes.
#include <arm_neon.h>

#include "../peak_simd.h"

namespace spinquant::detail {
namespace {

uint64_t run_i8mm(int64_t iterations) {
  int32x4_t acc[kPeakChains];
  for (int i = 0; i < kPeakChains; ++i) acc[i] = vdupq_n_s32(i);
  const int8x16_t a = vdupq_n_s8(3), w = vdupq_n_s8(-2);
  for (int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < kPeakChains; ++i) asm volatile("smmla %0.4s, %1.16b, %2.16b" : "+w"(acc[i]) : "w"(a), "w"(w));
  int32x4_t sum = acc[0];
  for (int i = 1; i < kPeakChains; ++i) sum = vaddq_s32(sum, acc[i]);
  return static_cast<uint32_t>(vaddvq_s32(sum));
}

}  // namespace

PeakLoop peak_loop_i8mm() { return {run_i8mm, 32.0 * kPeakChains, "smmla"}; }

}  // namespace spinquant::detail
