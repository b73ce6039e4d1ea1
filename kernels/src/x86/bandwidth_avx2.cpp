// read_bytes's loop with 256-bit loads.
#include <immintrin.h>

#include "../bandwidth_simd.h"

namespace spinquant::detail {

uint64_t read_lines_avx2(const unsigned char* p, int64_t lines, const unsigned char* end, int64_t ahead) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (int64_t i = 0; i < lines; ++i, p += 64) {
    if (ahead > 0 && p + ahead < end) _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T0);
    acc0 = _mm256_add_epi64(acc0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    acc1 = _mm256_add_epi64(acc1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi64(acc0, acc1));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

}  // namespace spinquant::detail
