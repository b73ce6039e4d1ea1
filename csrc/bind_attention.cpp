// spinquant._kernels: the quantized KV cache and attention over it (numpy in, numpy out; GIL released).
#include <pybind11/numpy.h>

#include <string>
#include <vector>

#include "bindings.h"
#include "spinquant/attention.h"

namespace py = pybind11;

namespace spinquant_py {

namespace {

using spinquant::QuantKVCache;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

std::string shape_str(const py::array& a) {
  std::string s = "[";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

// a must be [T, heads, head_dim] (heads = -1: any); returns T.
int64_t check_3d(const FloatArray& a, const char* name, int64_t heads, int64_t head_dim) {
  if (a.ndim() != 3 || (heads >= 0 && a.shape(1) != heads) || a.shape(2) != head_dim)
    throw py::value_error(std::string("quant_kv: ") + name + " must be float32 [T, " +
                          (heads >= 0 ? std::to_string(heads) : std::string("n_heads")) + ", " +
                          std::to_string(head_dim) + "], got " + shape_str(a));
  return a.shape(0);
}

// A read-only numpy view of cache storage, kept alive by the cache object.
template <class T>
py::array view(const QuantKVCache& c, const T* data, int64_t last, py::handle owner) {
  py::array a(py::dtype::of<T>(), std::vector<py::ssize_t>{c.n_kv_heads(), c.max_seq_len(), last},
              std::vector<py::ssize_t>{static_cast<py::ssize_t>(c.max_seq_len() * last * sizeof(T)),
                                       static_cast<py::ssize_t>(last * sizeof(T)), sizeof(T)},
              data, owner);
  a.attr("setflags")(py::arg("write") = false);
  return a;
}

}  // namespace

void bind_attention(py::module_& m) {
  py::class_<QuantKVCache>(m, "QuantKVCache",
                           "One layer's KV cache, K and V quantized per token and KV head in asymmetric groups.")
      .def(py::init<int64_t, int64_t, int64_t, int, int64_t, bool>(), py::arg("n_kv_heads"), py::arg("head_dim"),
           py::arg("max_seq_len"), py::arg("bits"), py::arg("group"), py::arg("rotate_qk") = false)
      .def(
          "append",
          [](QuantKVCache& c, const FloatArray& k, const FloatArray& v, int64_t start_pos) {
            const int64_t T = check_3d(k, "k", c.n_kv_heads(), c.head_dim());
            if (check_3d(v, "v", c.n_kv_heads(), c.head_dim()) != T)
              throw py::value_error("quant_kv: k and v must hold the same number of tokens, got " + shape_str(k) +
                                    " and " + shape_str(v));
            py::gil_scoped_release release;
            c.append(k.data(), v.data(), T, start_pos);
          },
          py::arg("k"), py::arg("v"), py::arg("start_pos"),
          "Quantize and store k, v [T, n_kv_heads, head_dim] at positions start_pos .. start_pos + T - 1.")
      .def(
          "attention",
          [](const QuantKVCache& c, const FloatArray& q, int64_t start_pos, py::object scale, int threads) {
            const int64_t T = check_3d(q, "q", -1, c.head_dim()), n_heads = q.shape(1);
            const float sc = scale.is_none() ? 0.0f : scale.cast<float>();
            if (!scale.is_none() && !(sc > 0.0f)) throw py::value_error("quant_kv: scale must be positive");
            py::array_t<float> out({T, n_heads, c.head_dim()});
            float* o = out.mutable_data();
            {
              py::gil_scoped_release release;
              spinquant::quant_kv_attention(c, q.data(), T, n_heads, start_pos, o, sc, threads);
            }
            return out;
          },
          py::arg("q"), py::arg("start_pos"), py::arg("scale") = py::none(), py::arg("threads") = 0,
          "Causal GQA attention of q [T, n_heads, head_dim] at positions start_pos.. over the cache.")
      .def("reset", &QuantKVCache::reset)
      .def_property_readonly("length", &QuantKVCache::length)
      .def_property_readonly("n_kv_heads", &QuantKVCache::n_kv_heads)
      .def_property_readonly("head_dim", &QuantKVCache::head_dim)
      .def_property_readonly("max_seq_len", &QuantKVCache::max_seq_len)
      .def_property_readonly("bits", &QuantKVCache::bits)
      .def_property_readonly("group", &QuantKVCache::group)
      .def_property_readonly("rotate_qk", &QuantKVCache::rotate_qk)
      .def(
          "storage",
          [](py::object self, int which) {
            if (which != 0 && which != 1) throw py::value_error("quant_kv: storage(which): 0 for K, 1 for V");
            const auto& c = self.cast<const QuantKVCache&>();
            return py::make_tuple(view(c, c.codes(which), c.row_bytes(), self),
                                  view(c, c.scales(which), c.groups(), self),
                                  view(c, c.zeros(which), c.groups(), self));
          },
          py::arg("which"),
          "Read-only views (codes uint8 [n_kv, max_seq, row_bytes], scales, zeros float32 [n_kv, max_seq, groups]).");
}

}  // namespace spinquant_py
