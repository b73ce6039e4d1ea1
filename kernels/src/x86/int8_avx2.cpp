// AVX2 int8 linear: bytes widened to 16 bits, vpmaddwd (no saturation: u8 x s8 products fit in 16 bits,
// pairs sum in 32), 4 rows a pass; the last K % 16 inputs in scalar code.
#include <immintrin.h>

#include "../int8_kernels.h"

namespace spinquant::int8::detail {
namespace {

constexpr int kRows = 4;

inline __m256i madd16(const uint8_t* x, const int8_t* q) {
  const __m256i a = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  return _mm256_madd_epi16(a, b);
}

inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

int32_t dot_tail(const uint8_t* x, const int8_t* q, int64_t k0, int64_t K) {
  int32_t s = 0;
  for (int64_t k = k0; k < K; ++k) s += static_cast<int32_t>(x[k]) * q[k];
  return s;
}

void gemm(const Weight& w, const Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* y) {
  const int64_t body = w.K / 16 * 16;
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* x = a.codes + m * a.Kp;
    int64_t n = n0;
    for (; n + kRows <= n1; n += kRows) {
      const int8_t* q = w.codes + n * w.K;
      __m256i acc[kRows] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                            _mm256_setzero_si256()};
      for (int64_t k = 0; k < body; k += 16)
        for (int r = 0; r < kRows; ++r) acc[r] = _mm256_add_epi32(acc[r], madd16(x + k, q + r * w.K + k));
      for (int r = 0; r < kRows; ++r) {
        const int32_t dot = hsum(acc[r]) + dot_tail(x, q + r * w.K, body, w.K);
        y[m * w.N + n + r] = dequant(dot, a.zero[m], w.rowsum[n + r], a.scale[m], w.scales[n + r]);
      }
    }
    for (; n < n1; ++n) {
      const int8_t* q = w.codes + n * w.K;
      __m256i acc = _mm256_setzero_si256();
      for (int64_t k = 0; k < body; k += 16) acc = _mm256_add_epi32(acc, madd16(x + k, q + k));
      const int32_t dot = hsum(acc) + dot_tail(x, q, body, w.K);
      y[m * w.N + n] = dequant(dot, a.zero[m], w.rowsum[n], a.scale[m], w.scales[n]);
    }
  }
}

}  // namespace

const Kernels& kernels_avx2() {
  static const Kernels k{gemm, pre_axpy};
  return k;
}

}  // namespace spinquant::int8::detail
