// spinquant._kernels: the int8 linear (lm_head) and int8 embedding gather, on numpy arrays.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "spinquant/int8.h"

namespace py = pybind11;

namespace spinquant_py {

namespace {

using I8 = py::array_t<int8_t, py::array::c_style | py::array::forcecast>;
using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

spinquant::int8::Weight weight_of(const I8& codes, const F32& scales, const I32* rowsum) {
  if (codes.ndim() != 2) throw py::value_error("int8: codes must be a 2-D int8 array [N, K]");
  const int64_t N = codes.shape(0), K = codes.shape(1);
  if (scales.ndim() != 1 || scales.shape(0) != N) throw py::value_error("int8: scales must be float32 [N]");
  if (rowsum && (rowsum->ndim() != 1 || rowsum->shape(0) != N)) throw py::value_error("int8: rowsum must be int32 [N]");
  return {codes.data(), scales.data(), rowsum ? rowsum->data() : nullptr, N, K};
}

}  // namespace

void bind_int8(py::module_& m) {
  m.def("int8_row_sums", [](const I8& codes) {
    if (codes.ndim() != 2) throw py::value_error("int8_row_sums: codes must be a 2-D int8 array [N, K]");
    I32 out(codes.shape(0));
    spinquant::int8::row_sums(codes.data(), codes.shape(0), codes.shape(1), out.mutable_data());
    return out;
  }, py::arg("codes"), "sum_k codes[n, k] as int32 [N].");
  m.def("int8_linear", [](const F32& x, const I8& codes, const F32& scales, const I32& rowsum,
                          const std::optional<F32>& pre, int threads) {
    const auto w = weight_of(codes, scales, &rowsum);
    if (x.ndim() != 2 || x.shape(1) != w.K) throw py::value_error("int8_linear: x must be float32 [M, K]");
    if (pre && (pre->ndim() != 2 || pre->shape(0) != w.K || pre->shape(1) != w.K))
      throw py::value_error("int8_linear: pre must be float32 [K, K]");
    F32 y({x.shape(0), static_cast<py::ssize_t>(w.N)});
    const float* p = pre ? pre->data() : nullptr;
    float* out = y.mutable_data();
    {
      py::gil_scoped_release release;
      spinquant::int8::linear(w, x.data(), x.shape(0), out, p, threads);
    }
    return y;
  }, py::arg("x"), py::arg("codes"), py::arg("scales"), py::arg("rowsum"), py::arg("pre") = py::none(),
        py::arg("threads") = 0, "y = fq8(x (@ pre)) @ (codes * scales[:, None])^T, see spinquant/int8.h.");
  m.def("int8_embedding", [](const I64& ids, const I8& codes, const F32& scales, int threads) {
    const auto w = weight_of(codes, scales, nullptr);
    F32 out({static_cast<py::ssize_t>(ids.size()), static_cast<py::ssize_t>(w.K)});
    float* o = out.mutable_data();
    {
      py::gil_scoped_release release;
      spinquant::int8::embedding(w, ids.data(), ids.size(), o, threads);
    }
    return out;
  }, py::arg("ids"), py::arg("codes"), py::arg("scales"), py::arg("threads") = 0,
        "codes[ids] * scales[ids, None] as float32 [T, K].");
}

}  // namespace spinquant_py
