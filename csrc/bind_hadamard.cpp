// spinquant._kernels: the fast Walsh-Hadamard transform (in place over the last axis of a float32 array).
#include <pybind11/numpy.h>

#include <string>

#include "bindings.h"
#include "spinquant/hadamard.h"

namespace py = pybind11;

namespace spinquant_py {

namespace {

// hk: None (K = 1) or an int8 C-contiguous [K, K] array; returns K and sets *data.
int64_t read_hk(const py::object& hk, py::array_t<int8_t, py::array::c_style>* keep) {
  if (hk.is_none()) return 1;
  py::array arr = py::array::ensure(hk);
  if (!arr || arr.dtype().kind() != 'i' || arr.itemsize() != 1)
    throw py::value_error("hadamard: hk must be an int8 array of +-1 (K x K) or None");
  *keep = py::array_t<int8_t, py::array::c_style>::ensure(arr);
  if (keep->ndim() != 2 || keep->shape(0) != keep->shape(1))
    throw py::value_error("hadamard: hk must be square [K, K], got ndim " + std::to_string(keep->ndim()));
  return keep->shape(0);
}

// x: writeable C-contiguous float32 or float16 with at least one axis; returns the number of rows of length n.
int64_t check_x(py::array& x, int64_t n) {
  if (x.dtype().kind() != 'f' || (x.itemsize() != 4 && x.itemsize() != 2))
    throw py::value_error("hadamard: x must be float32 or float16 (convert with .float())");
  if (!(x.flags() & py::array::c_style)) throw py::value_error("hadamard: x must be C-contiguous (.contiguous())");
  if (!x.writeable()) throw py::value_error("hadamard: x must be writeable (the transform is in place)");
  if (x.ndim() < 1 || x.shape(x.ndim() - 1) != n)
    throw py::value_error("hadamard: the last axis of x must have length n=" + std::to_string(n));
  return n == 0 ? 0 : x.size() / n;
}

// In place, GIL released; float16 storage goes through the fp32 transform and rounds back.
void apply(const spinquant::HadamardTransform& t, py::array& x, int threads) {
  const int64_t rows = check_x(x, t.n());
  void* data = x.mutable_data();
  const bool half = x.itemsize() == 2;
  py::gil_scoped_release release;
  if (half)
    t.apply_f16(static_cast<uint16_t*>(data), rows, threads);
  else
    t.apply(static_cast<float*>(data), rows, threads);
}

}  // namespace

void bind_hadamard(py::module_& m) {
  py::class_<spinquant::HadamardTransform>(m, "HadamardTransform",
                                           "Validated orthonormal Hadamard transform of size n = K * 2^k.")
      .def(py::init([](int64_t n, const py::object& hk) {
             py::array_t<int8_t, py::array::c_style> keep;
             const int64_t K = read_hk(hk, &keep);
             return spinquant::HadamardTransform(n, hk.is_none() ? nullptr : keep.data(), K);
           }),
           py::arg("n"), py::arg("hk") = py::none())
      .def_property_readonly("n", &spinquant::HadamardTransform::n)
      .def_property_readonly("K", &spinquant::HadamardTransform::K)
      .def(
          "apply_",
          [](const spinquant::HadamardTransform& t, py::array x, int threads) { apply(t, x, threads); },
          py::arg("x"), py::arg("threads") = 0, "In place over the last axis of x (float32 or float16, C-contiguous).");
  m.def(
      "hadamard_transform_",
      [](py::array x, const py::object& hk, int threads) {
        py::array_t<int8_t, py::array::c_style> keep;
        const int64_t K = read_hk(hk, &keep);
        if (x.ndim() < 1) throw py::value_error("hadamard: x needs at least one axis");
        const int64_t n = x.shape(x.ndim() - 1);
        apply(spinquant::HadamardTransform(n, hk.is_none() ? nullptr : keep.data(), K), x, threads);
      },
      py::arg("x"), py::arg("hk") = py::none(), py::arg("threads") = 0,
      "y = x @ (kron(hk, H_m) / sqrt(n)).T in place over the last axis (n = K * 2^k; float32 or float16); hk\n"
      "int8 [K, K] or None.");
}

}  // namespace spinquant_py
