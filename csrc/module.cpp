#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "spinquant/bandwidth.h"
#include "spinquant/checksum.h"
#include "spinquant/cpu.h"
#include "spinquant/peak.h"

namespace py = pybind11;

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "spinquant native kernels: int4 GEMM/GEMV, int8 lm_head and embedding, fast Walsh-Hadamard transform, quantized-KV attention";
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
  m.def("read_bytes", [](py::array_t<uint8_t, py::array::c_style> buffer, int threads, int64_t prefetch_bytes) {
    if (threads < 0) throw py::value_error("threads must be >= 0 (0 = all cores)");
    spinquant::ByteSpan span{buffer.data(), static_cast<size_t>(buffer.size())};
    py::gil_scoped_release release;
    return spinquant::read_bytes(span, threads, prefetch_bytes);
  }, py::arg("buffer"), py::arg("threads") = 0, py::arg("prefetch_bytes") = 16384,
        "Read a contiguous buffer once on the kernels' thread pool (sum of its 64-bit words): a bandwidth probe.");
  m.def("int8_peak", [](int threads, double seconds) {
    py::gil_scoped_release release;
    const spinquant::Int8Peak p = spinquant::int8_peak(threads, seconds);
    return std::make_pair(p.macs_per_s, std::string(p.instruction));
  }, py::arg("threads") = 1, py::arg("seconds") = 0.2,
        "int8 dot-product multiply-accumulates per second of this CPU on `threads` threads (a compute-peak probe) "
        "and the instruction measured.");
  m.def("artifact_checksum", [](py::buffer image, size_t hole) {
    const py::buffer_info info = image.request();
    const auto size = static_cast<size_t>(info.size * info.itemsize);
    if (hole + spinquant::kChecksumDigits > size) throw py::value_error("the checksum digits lie outside the image");
    const auto* data = static_cast<const uint8_t*>(info.ptr);
    py::gil_scoped_release release;
    return spinquant::artifact_checksum(data, size, hole);
  }, py::arg("image"), py::arg("hole"),
        "XXH64 of a file image (any contiguous buffer) with its 16 checksum digits at `hole` read as '0'.");
  m.def("verify_artifact", [](py::buffer image) {
    const py::buffer_info info = image.request();
    const auto* data = static_cast<const uint8_t*>(info.ptr);
    const auto size = static_cast<size_t>(info.size * info.itemsize);
    py::gil_scoped_release release;
    return static_cast<int>(spinquant::verify_artifact(data, size));
  }, py::arg("image"), "0: the recorded checksum matches, 1: none is recorded, 2: damaged (spinquant/checksum.h).");
  spinquant_py::bind_int4(m);
  spinquant_py::bind_hadamard(m);
  spinquant_py::bind_attention(m);
  spinquant_py::bind_int8(m);
}
