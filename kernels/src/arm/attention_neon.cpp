// NEON quantized-KV attention: 4 floats a vector (see attention_simd.h).
#include <arm_neon.h>

#include <cstring>

#include "../attention_simd.h"
#include "vec_neon.h"

namespace spinquant::detail {

void attend_neon(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                 float* scratch, float* stats) {
  if (!AttentionSimd<Neon>::supported(kv)) return attend_ref(q, r, kv, len, scale, out, scratch, stats);
  AttentionSimd<Neon>::attend(q, r, kv, len, scale, out, scratch, stats);
}

void attend_tile_neon(const float* q, int64_t m, int64_t r, int64_t stride, const int64_t* lens,
                      const KVHeadView& kv, float scale, float* out, float* scratch) {
  if (!AttentionSimd<Neon>::supported(kv)) return attend_tile_ref(q, m, r, stride, lens, kv, scale, out, scratch);
  AttentionSimd<Neon>::attend_tile(q, m, r, stride, lens, kv, scale, out, scratch);
}

}  // namespace spinquant::detail
