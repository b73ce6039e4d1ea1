// Each kernel family binds itself in its own csrc/bind_<family>.cpp; module.cpp calls them all.
#pragma once
#include <pybind11/pybind11.h>

namespace spinquant_py {
void bind_int4(pybind11::module_& m);
void bind_hadamard(pybind11::module_& m);
void bind_attention(pybind11::module_& m);
void bind_int8(pybind11::module_& m);
}  // namespace spinquant_py
