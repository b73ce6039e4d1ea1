#include "bindings.h"

namespace spinquant_py {
void bind_hadamard(pybind11::module_& m) { (void)m; }
}  // namespace spinquant_py
