// spinquant._kernels: Int4Linear (prepacked int4 weights, W4A4 / W4A8 / W4A16 forward) and
// quantize_activations. Inputs are checked here so that a wrong shape or dtype raises ValueError
// naming the problem and the fix; compute runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <utility>

#include "bindings.h"
#include "spinquant/int4.h"

namespace py = pybind11;
using spinquant::int4::PackedInt4;

namespace spinquant_py {
namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// numpy type numbers (NPY_UBYTE, NPY_HALF, NPY_FLOAT), fixed by numpy's C API; comparing them is
// much cheaper than building dtype objects from strings on every call.
int dtype_num(const std::string& name) {
  if (name == "uint8") return py::dtype::of<uint8_t>().num();
  if (name == "float32") return py::dtype::of<float>().num();
  return 23;  // float16
}

// Checks dtype and shape of `a` (a negative expected size matches anything) and returns it C-contiguous.
py::array checked(const py::array& a, const char* name, const char* dtype, std::vector<py::ssize_t> shape) {
  if (a.dtype().num() != dtype_num(dtype) || a.dtype().byteorder() == '>')
    throw py::value_error(std::string(name) + " must have dtype " + dtype + ", got " +
                          std::string(py::str(a.dtype())) + "; convert it with .astype(np." + dtype + ")");
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
  if (!ok) {
    std::string want = "(";
    for (size_t i = 0; i < shape.size(); ++i)
      want += (i ? ", " : "") + (shape[i] < 0 ? std::string("any") : std::to_string(shape[i]));
    throw py::value_error(std::string(name) + " has shape " + shape_str(a) + ", expected " + want +
                          (shape.size() == 1 ? ",)" : ")") + " (see docs/INT4_FORMAT.md)");
  }
  if (a.flags() & py::array::c_style) return a;
  return py::module_::import("numpy").attr("ascontiguousarray")(a).cast<py::array>();
}

template <typename T>
const T* ptr(const py::array& a) {
  return static_cast<const T*>(a.data());
}

class Int4Linear {
 public:
  Int4Linear(const py::array& qweight, const py::array& scales, const std::optional<py::array>& zeros, int64_t K,
             int64_t group) {
    if (K < 1) throw py::value_error("K must be >= 1 (the number of input features), got " + std::to_string(K));
    if (group < -1)
      throw py::value_error("group must be a group size >= 1, or 0 / -1 for per-channel scales; got " +
                            std::to_string(group));
    if (group <= 0) group = K;  // spinquant.quant's convention for per-channel
    if (qweight.ndim() != 2)
      throw py::value_error("qweight must be 2-D [N, ceil(K/2)] uint8, got shape " + shape_str(qweight));
    const py::ssize_t N = qweight.shape(0), G = (K + group - 1) / group;
    const py::array q = checked(qweight, "qweight", "uint8", {N, (K + 1) / 2});
    const py::array s = checked(scales, "scales", "float16", {N, G});
    std::optional<py::array> z;
    if (zeros) z = checked(*zeros, "zeros", "uint8", {N, G});
    packed_ = spinquant::int4::prepack(ptr<uint8_t>(q), ptr<uint16_t>(s), z ? ptr<uint8_t>(*z) : nullptr, N, K, group);
  }

  py::array_t<float> forward(const py::array& x, int act_bits, float act_clip, const std::optional<py::array>& bias,
                             int threads) const {
    if (act_bits != 16 && (act_bits < 2 || act_bits > 8))
      throw py::value_error("act_bits must be 4 or 8 (quantized activations, 2..7 also work) or 16 (fp32), got " +
                            std::to_string(act_bits));
    if (!(act_clip > 0.0f && act_clip <= 1.0f))
      throw py::value_error("act_clip must be in (0, 1], got " + std::to_string(act_clip));
    if (threads < 0) throw py::value_error("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
    const py::array xs = checked(x, "x", "float32", {-1, packed_.K});
    std::optional<py::array> b;
    if (bias) b = checked(*bias, "bias", "float32", {packed_.N});
    const int64_t M = xs.shape(0);
    py::array_t<float> y({static_cast<py::ssize_t>(M), static_cast<py::ssize_t>(packed_.N)});
    spinquant::int4::LinearParams params;
    params.act_bits = act_bits;
    params.act_clip = act_clip;
    params.bias = b ? ptr<float>(*b) : nullptr;
    params.threads = threads;
    const float* xp = ptr<float>(xs);
    float* yp = y.mutable_data();
    {
      py::gil_scoped_release release;
      spinquant::int4::linear(packed_, xp, M, yp, params);
    }
    return y;
  }

  py::tuple unpack() const {
    py::array_t<uint8_t> q({packed_.N, (packed_.K + 1) / 2});
    py::array s(py::dtype(dtype_num("float16")), {packed_.N, packed_.G});
    py::object z = py::none();
    uint8_t* zp = nullptr;
    if (packed_.asymmetric) {
      py::array_t<uint8_t> za({packed_.N, packed_.G});
      zp = za.mutable_data();
      z = za;
    }
    spinquant::int4::unpack(packed_, q.mutable_data(), static_cast<uint16_t*>(s.mutable_data()), zp);
    return py::make_tuple(q, s, z);
  }

  py::array_t<float> dequantize() const {
    py::array_t<float> w({packed_.N, packed_.K});
    spinquant::int4::dequantize(packed_, w.mutable_data());
    return w;
  }

  const PackedInt4& packed() const { return packed_; }

 private:
  PackedInt4 packed_;
};

py::tuple quantize_activations(const py::array& x, int bits, float clip) {
  if (bits < 2 || bits > 8) throw py::value_error("bits must be in 2..8, got " + std::to_string(bits));
  if (!(clip > 0.0f && clip <= 1.0f)) throw py::value_error("clip must be in (0, 1], got " + std::to_string(clip));
  const py::array xs = checked(x, "x", "float32", {-1, -1});
  const py::ssize_t M = xs.shape(0), K = xs.shape(1);
  if (K < 1) throw py::value_error("x must have at least one column");
  py::array_t<uint8_t> codes({M, K});
  py::array_t<float> scales(M);
  py::array_t<int32_t> zeros(M);
  for (py::ssize_t m = 0; m < M; ++m)
    spinquant::int4::quantize_activations(ptr<float>(xs) + m * K, K, bits, clip, codes.mutable_data() + m * K,
                                          scales.mutable_data() + m, zeros.mutable_data() + m);
  return py::make_tuple(codes, scales, zeros);
}

}  // namespace

void bind_int4(py::module_& m) {
  py::class_<Int4Linear>(m, "Int4Linear",
                         "int4-weight linear layer, prepacked once from the storage format of docs/INT4_FORMAT.md.")
      .def(py::init<const py::array&, const py::array&, const std::optional<py::array>&, int64_t, int64_t>(),
           py::arg("qweight"), py::arg("scales"), py::arg("zeros"), py::arg("K"), py::arg("group"),
           "qweight uint8 [N, ceil(K/2)], scales float16 [N, G], zeros uint8 [N, G] or None (symmetric); "
           "group 0 or -1 means per-channel (G = 1).")
      .def("forward", &Int4Linear::forward, py::arg("x"), py::arg("act_bits") = 8, py::arg("act_clip") = 1.0f,
           py::arg("bias") = py::none(), py::arg("threads") = 0,
           "x float32 [M, K] -> float32 [M, N]; act_bits 4 / 8 quantize activations per token, 16 keeps fp32.")
      .def("unpack", &Int4Linear::unpack, "Back to the storage format: (qweight, scales, zeros or None).")
      .def("dequantize", &Int4Linear::dequantize, "Dequantized weight, float32 [N, K].")
      .def_property_readonly("N", [](const Int4Linear& l) { return l.packed().N; })
      .def_property_readonly("K", [](const Int4Linear& l) { return l.packed().K; })
      .def_property_readonly("group", [](const Int4Linear& l) { return l.packed().group; })
      .def_property_readonly("asymmetric", [](const Int4Linear& l) { return l.packed().asymmetric; })
      .def_property_readonly("packed_bytes", [](const Int4Linear& l) { return l.packed().packed_bytes(); },
                             "Bytes of codes, scales and zeros one forward pass streams.");
  m.def("quantize_activations", &quantize_activations, py::arg("x"), py::arg("bits"), py::arg("clip") = 1.0f,
        "Per-token asymmetric quantization of x float32 [M, K] -> (codes uint8 [M, K], scales float32 [M], "
        "zeros int32 [M]).");
}

}  // namespace spinquant_py
