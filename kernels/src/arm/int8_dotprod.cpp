// NEON dotprod int8 linear: sdot (4 int8 products a lane).
#include "int8_neon.h"

namespace spinquant::int8::detail {
namespace {

int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t q) { return vdotq_s32(acc, a, q); }

}  // namespace

const Kernels& kernels_dotprod() {
  static const Kernels k{gemm_neon<dot16>, pre_axpy};
  return k;
}

}  // namespace spinquant::int8::detail
