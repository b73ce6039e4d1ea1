// int8_peak's AVX-512 VNNI loop: vpdpbusd on 512-bit registers, 64 u8 x s8 products a lane group of 4.
// GCC 12 reports false "may be used uninitialized" warnings inside avx512fintrin.h's reductions.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "../peak_simd.h"

namespace spinquant::detail {
namespace {

uint64_t run_avx512(int64_t iterations) {
  __m512i acc[kPeakChains];
  for (int i = 0; i < kPeakChains; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi8(3), w = _mm512_set1_epi8(-2);
  for (int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < kPeakChains; ++i) asm volatile("vpdpbusd %2, %1, %0" : "+v"(acc[i]) : "v"(a), "v"(w));
  __m512i sum = acc[0];
  for (int i = 1; i < kPeakChains; ++i) sum = _mm512_add_epi32(sum, acc[i]);
  return static_cast<uint32_t>(_mm512_reduce_add_epi32(sum));
}

}  // namespace

PeakLoop peak_loop_avx512() { return {run_avx512, 64.0 * kPeakChains, "vpdpbusd zmm"}; }

}  // namespace spinquant::detail
