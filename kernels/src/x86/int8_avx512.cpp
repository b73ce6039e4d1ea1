// AVX-512 VNNI int8 linear: vpdpbusd (u8 activation codes x s8 weights, 4 products a lane), 4 rows a pass.
#include <immintrin.h>

// GCC 12 flags the undefined upper halves inside _mm512_reduce_add_epi32 (as in int4_avx512.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "../int8_kernels.h"

namespace spinquant::int8::detail {
namespace {

constexpr int kRows = 4;


void gemm(const Weight& w, const Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* y) {
  const int64_t chunks = (w.K + 63) / 64, tail = w.K - (chunks - 1) * 64;
  const __mmask64 last = tail == 64 ? ~__mmask64{0} : (__mmask64{1} << tail) - 1;
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* x = a.codes + m * a.Kp;
    int64_t n = n0;
    for (; n + kRows <= n1; n += kRows) {
      const int8_t* q = w.codes + n * w.K;
      __m512i acc[kRows] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                            _mm512_setzero_si512()};
      for (int64_t c = 0; c < chunks; ++c) {
        const __mmask64 mask = c + 1 == chunks ? last : ~__mmask64{0};
        const __m512i av = _mm512_loadu_si512(x + c * 64);
        for (int r = 0; r < kRows; ++r)
          acc[r] = _mm512_dpbusd_epi32(acc[r], av, _mm512_maskz_loadu_epi8(mask, q + r * w.K + c * 64));
      }
      for (int r = 0; r < kRows; ++r)
        y[m * w.N + n + r] =
            dequant(_mm512_reduce_add_epi32(acc[r]), a.zero[m], w.rowsum[n + r], a.scale[m], w.scales[n + r]);
    }
    for (; n < n1; ++n) {
      const int8_t* q = w.codes + n * w.K;
      __m512i acc = _mm512_setzero_si512();
      for (int64_t c = 0; c < chunks; ++c) {
        const __mmask64 mask = c + 1 == chunks ? last : ~__mmask64{0};
        acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(x + c * 64), _mm512_maskz_loadu_epi8(mask, q + c * 64));
      }
      y[m * w.N + n] = dequant(_mm512_reduce_add_epi32(acc), a.zero[m], w.rowsum[n], a.scale[m], w.scales[n]);
    }
  }
}

}  // namespace

const Kernels& kernels_avx512() {
  static const Kernels k{gemm, pre_axpy};
  return k;
}

}  // namespace spinquant::int8::detail
