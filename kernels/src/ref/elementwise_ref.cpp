// Scalar reference of the element-wise kernels (see elementwise_simd.h).
#include "../elementwise_simd.h"

namespace spinquant::detail {

const ElementwiseKernels& elementwise_ref() { return ElementwiseSimd<Scalar>::table(); }

}  // namespace spinquant::detail
