// AVX2 quantized-KV attention: 8 floats a vector (see attention_simd.h).
#include <immintrin.h>

#include "../attention_simd.h"
#include "vec_avx2.h"

namespace spinquant::detail {

void attend_avx2(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                 float* scratch, float* stats) {
  if (!AttentionSimd<Avx2>::supported(kv)) return attend_ref(q, r, kv, len, scale, out, scratch, stats);
  AttentionSimd<Avx2>::attend(q, r, kv, len, scale, out, scratch, stats);
}

}  // namespace spinquant::detail
