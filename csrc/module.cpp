#include <pybind11/stl.h>

#include "bindings.h"
#include "spinquant/cpu.h"

namespace py = pybind11;

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "spinquant native kernels: int4 GEMM/GEMV, fast Walsh-Hadamard transform, quantized-KV attention";
  m.def("active_isa", [] { return std::string(spinquant::isa_name(spinquant::active_isa())); },
        "The ISA the kernels dispatch to (SPINQUANT_ISA forces one).");
  m.def("supported_isas", [] {
    std::vector<std::string> out;
    for (auto isa : {spinquant::Isa::Scalar, spinquant::Isa::Avx2, spinquant::Isa::Avx512, spinquant::Isa::Neon,
                     spinquant::Isa::Dotprod, spinquant::Isa::I8mm})
      if (spinquant::isa_supported(isa)) out.emplace_back(spinquant::isa_name(isa));
    return out;
  });
  m.def("force_isa", [](const std::string& name) {
    for (auto isa : {spinquant::Isa::Scalar, spinquant::Isa::Avx2, spinquant::Isa::Avx512, spinquant::Isa::Neon,
                     spinquant::Isa::Dotprod, spinquant::Isa::I8mm})
      if (name == spinquant::isa_name(isa)) return spinquant::force_isa(isa);
    throw py::value_error("unknown ISA '" + name + "': use scalar, avx2, avx512, neon, dotprod or i8mm");
  }, "Force one ISA for the following calls (tests, benchmarks).");
  m.def("reset_isa", &spinquant::reset_isa, "Return to automatic ISA choice.");
  spinquant_py::bind_int4(m);
  spinquant_py::bind_hadamard(m);
  spinquant_py::bind_attention(m);
}
