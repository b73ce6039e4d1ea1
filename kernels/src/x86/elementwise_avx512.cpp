// AVX-512 element-wise kernels (see elementwise_simd.h).
#include "../elementwise_simd.h"
#include "vec_avx512.h"

namespace spinquant::detail {

const ElementwiseKernels& elementwise_avx512() { return ElementwiseSimd<Avx512>::table(); }

}  // namespace spinquant::detail
