// int8_peak's AVX2 loop: the int4 AVX2 kernels' step, vpmaddubsw (32 u8 x s8 products into 16-bit pairs), vpmaddwd
// with ones (to 32 bits) and vpaddd into the accumulator.
#include <immintrin.h>

#include "../peak_simd.h"

namespace spinquant::detail {
namespace {

uint64_t run_avx2(int64_t iterations) {
  __m256i acc[kPeakChains];
  for (int i = 0; i < kPeakChains; ++i) acc[i] = _mm256_set1_epi32(i);
  const __m256i a = _mm256_set1_epi8(3), w = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
  for (int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < kPeakChains; ++i) {
      __m256i p;
      asm volatile("vpmaddubsw %2, %1, %0" : "=x"(p) : "x"(a), "x"(w));
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
    }
  __m256i sum = acc[0];
  for (int i = 1; i < kPeakChains; ++i) sum = _mm256_add_epi32(sum, acc[i]);
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
  uint64_t total = 0;
  for (uint32_t v : lanes) total += v;
  return total;
}

}  // namespace

PeakLoop peak_loop_avx2() { return {run_avx2, 32.0 * kPeakChains, "vpmaddubsw+vpmaddwd ymm"}; }

}  // namespace spinquant::detail
