#include "bindings.h"

namespace spinquant_py {
void bind_int4(pybind11::module_& m) { (void)m; }
}  // namespace spinquant_py
