// NEON int8 linear without dotprod: smull + sadalp (8 products widened to 16 bits, pairs added into 32).
#include "int8_neon.h"

namespace spinquant::int8::detail {
namespace {

int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t q) {
  acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(q)));
  return vpadalq_s16(acc, vmull_high_s8(a, q));
}

}  // namespace

const Kernels& kernels_neon() {
  static const Kernels k{gemm_neon<dot16>, pre_axpy};
  return k;
}

}  // namespace spinquant::int8::detail
