// AVX2 element-wise kernels (see elementwise_simd.h).
#include "../elementwise_simd.h"
#include "vec_avx2.h"

namespace spinquant::detail {

const ElementwiseKernels& elementwise_avx2() { return ElementwiseSimd<Avx2>::table(); }

}  // namespace spinquant::detail
