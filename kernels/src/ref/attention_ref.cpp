// Scalar reference of KV-cache attention: dequantize each cached row exactly as the convention says (float
// rows as they are), float dot products in order, a max-subtracted softmax with std::exp, float accumulation of V.
#include <algorithm>
#include <cmath>

#include "spinquant/attention.h"

namespace spinquant::detail {

namespace {

// Row j of cache tensor `which` (0 K, 1 V) as floats: (code - zero) * scale.
void dequant_row(const KVHeadView& kv, int which, int64_t j, float* out) {
  const uint8_t* row = kv.codes[which] + j * kv.row_bytes;
  if (kv.bits == 32) {  // float cache
    std::copy_n(reinterpret_cast<const float*>(row), kv.head_dim, out);
    return;
  }
  const float* s = kv.scales[which] + j * kv.groups;
  const float* z = kv.zeros[which] + j * kv.groups;
  for (int64_t d = 0; d < kv.head_dim; ++d) {
    const int code = kv.bits == 8 ? row[d] : (row[d / 2] >> (4 * (d & 1))) & 0xF;
    const int64_t g = d / kv.group;
    out[d] = (static_cast<float>(code) - z[g]) * s[g];
  }
}

}  // namespace

void attend_ref(const float* q, int64_t r, const KVHeadView& kv, int64_t len, float scale, float* out,
                float* scratch, float* stats) {
  const int64_t hd = kv.head_dim;
  float* scores = scratch;        // [r][len]
  float* row = scratch + r * len;  // [head_dim] (scratch holds r * head_dim here, r >= 1)
  for (int64_t j = 0; j < len; ++j) {
    dequant_row(kv, 0, j, row);
    for (int64_t i = 0; i < r; ++i) {
      float dot = 0.0f;
      for (int64_t d = 0; d < hd; ++d) dot += q[i * hd + d] * row[d];
      scores[i * len + j] = dot * scale;
    }
  }
  for (int64_t i = 0; i < r; ++i) {
    float* s = scores + i * len;
    const float mx = *std::max_element(s, s + len);
    float sum = 0.0f;
    for (int64_t j = 0; j < len; ++j) sum += (s[j] = std::exp(s[j] - mx));
    for (int64_t j = 0; j < len; ++j) s[j] /= sum;
    if (stats) {
      stats[2 * i] = mx;
      stats[2 * i + 1] = sum;
    }
    std::fill(out + i * hd, out + (i + 1) * hd, 0.0f);
  }
  for (int64_t j = 0; j < len; ++j) {
    dequant_row(kv, 1, j, row);
    for (int64_t i = 0; i < r; ++i)
      for (int64_t d = 0; d < hd; ++d) out[i * hd + d] += scores[i * len + j] * row[d];
  }
}

void attend_tile_ref(const float* q, int64_t m, int64_t r, int64_t stride, const int64_t* lens, const KVHeadView& kv,
                     float scale, float* out, float* scratch) {
  for (int64_t t = 0; t < m; ++t) attend_ref(q + t * stride, r, kv, lens[t], scale, out + t * stride, scratch, nullptr);
}

}  // namespace spinquant::detail
