// NEON element-wise kernels (see elementwise_simd.h).
#include "../elementwise_simd.h"
#include "vec_neon.h"

namespace spinquant::detail {

const ElementwiseKernels& elementwise_neon() { return ElementwiseSimd<Neon>::table(); }

}  // namespace spinquant::detail
