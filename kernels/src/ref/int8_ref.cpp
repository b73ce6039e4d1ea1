// Scalar reference of the int8 linear (see int8.h).
#include "../int8_kernels.h"

namespace spinquant::int8::detail {
namespace {

void gemm(const Weight& w, const Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* y) {
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* x = a.codes + m * a.Kp;
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* q = w.codes + n * w.K;
      int32_t dot = 0;
      for (int64_t k = 0; k < w.K; ++k) dot += static_cast<int32_t>(x[k]) * q[k];
      y[m * w.N + n] = dequant(dot, a.zero[m], w.rowsum[n], a.scale[m], w.scales[n]);
    }
  }
}

}  // namespace

const Kernels& kernels_ref() {
  static const Kernels k{gemm, pre_axpy};
  return k;
}

}  // namespace spinquant::int8::detail
