// Scalar reference of the fast Walsh-Hadamard transform: the definition every ISA path matches bit for bit.
#include <cstring>

#include "spinquant/hadamard.h"

namespace spinquant::detail {

namespace {

// Sylvester FWHT in natural order, strides ascending (the order every SIMD path keeps).
void fwht_pow2_ref(float* x, int64_t m) {
  for (int64_t h = 1; h < m; h *= 2)
    for (int64_t i = 0; i < m; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

}  // namespace

void hadamard_row_ref(float* x, const HadamardTransform& t, float* scratch) {
  const int64_t K = t.K(), m = t.m();
  const float scale = t.scale();
  for (int64_t a = 0; a < K; ++a) fwht_pow2_ref(x + a * m, m);
  if (K == 1) {
    for (int64_t b = 0; b < m; ++b) x[b] *= scale;
    return;
  }
  const float* hk = t.hk();
  for (int64_t ao = 0; ao < K; ++ao)
    for (int64_t b = 0; b < m; ++b) {
      float acc = 0.0f;  // 0 + (+-x0) is exact, then additions in the order a = 0..K-1
      for (int64_t a = 0; a < K; ++a) acc += hk[ao * K + a] < 0 ? -x[a * m + b] : x[a * m + b];
      scratch[ao * m + b] = acc * scale;
    }
  std::memcpy(x, scratch, sizeof(float) * static_cast<size_t>(K * m));
}

void widen_f16_ref(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = half_to_float(in[i]);
}

void narrow_f16_ref(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_half(in[i]);
}

}  // namespace spinquant::detail
