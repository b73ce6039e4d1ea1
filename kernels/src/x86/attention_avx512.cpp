// AVX-512 quantized-KV attention (see attention_simd.h).
#include <immintrin.h>

#include "../attention_simd.h"
#include "vec_avx512.h"

namespace spinquant::detail {

void attend_avx512(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                   float* scratch, float* stats) {
  if (!AttentionSimd<Avx512>::supported(kv)) return attend_ref(q, r, kv, len, scale, out, scratch, stats);
  AttentionSimd<Avx512>::attend(q, r, kv, len, scale, out, scratch, stats);
}

void attend_tile_avx512(const float* q, int64_t m, int64_t r, int64_t stride, const int64_t* lens,
                        const KVHeadView& kv, float scale, float* out, float* scratch) {
  if (!AttentionSimd<Avx512>::supported(kv)) return attend_tile_ref(q, m, r, stride, lens, kv, scale, out, scratch);
  AttentionSimd<Avx512>::attend_tile(q, m, r, stride, lens, kv, scale, out, scratch);
}

}  // namespace spinquant::detail
