// int8_peak's arm64 dotprod loop: sdot, 16 s8 x s8 products into 4 int32 lanes.
#include <arm_neon.h>

#include "../peak_simd.h"

namespace spinquant::detail {
namespace {

uint64_t run_dotprod(int64_t iterations) {
  int32x4_t acc[kPeakChains];
  for (int i = 0; i < kPeakChains; ++i) acc[i] = vdupq_n_s32(i);
  const int8x16_t a = vdupq_n_s8(3), w = vdupq_n_s8(-2);
  for (int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < kPeakChains; ++i) asm volatile("sdot %0.4s, %1.16b, %2.16b" : "+w"(acc[i]) : "w"(a), "w"(w));
  int32x4_t sum = acc[0];
  for (int i = 1; i < kPeakChains; ++i) sum = vaddq_s32(sum, acc[i]);
  return static_cast<uint32_t>(vaddvq_s32(sum));
}

}  // namespace

PeakLoop peak_loop_dotprod() { return {run_dotprod, 16.0 * kPeakChains, "sdot"}; }

}  // namespace spinquant::detail
