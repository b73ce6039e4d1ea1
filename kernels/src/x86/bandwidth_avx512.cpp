// read_bytes's loop with 512-bit loads: one a cache line.
#include <immintrin.h>

#include "../bandwidth_simd.h"

namespace spinquant::detail {

uint64_t read_lines_avx512(const unsigned char* p, int64_t lines, const unsigned char* end, int64_t ahead) {
  __m512i acc = _mm512_setzero_si512();
  for (int64_t i = 0; i < lines; ++i, p += 64) {
    if (ahead > 0 && p + ahead < end) _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T0);
    acc = _mm512_add_epi64(acc, _mm512_loadu_si512(p));
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, acc);
  uint64_t sum = 0;
  for (uint64_t lane : lanes) sum += lane;
  return sum;
}

}  // namespace spinquant::detail
