// Internal interface between the int8 driver (int8_dispatch.cpp) and its per-ISA kernels.
#pragma once

#include <cstdint>

#include "spinquant/int8.h"

namespace spinquant::int8::detail {

// Activation codes of M tokens, each row padded with zeros to Kp (a multiple of 64) bytes.
struct Acts {
  const uint8_t* codes;  // [M, Kp]
  const float* scale;    // [M]
  const int32_t* zero;   // [M]
  int64_t Kp;
};

// y[m, n] for tokens [m0, m1) and rows [n0, n1).
using GemmFn = void (*)(const Weight& w, const Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* y);
// z[j] = sum_k x[k] pre[k, j] in k order (multiply, then add) for one token, j < K.
using PreFn = void (*)(const float* pre, const float* x, int64_t K, float* z);

struct Kernels {
  GemmFn gemm;
  PreFn pre;
};

const Kernels& kernels_ref();
#if defined(__x86_64__)
const Kernels& kernels_avx2();
const Kernels& kernels_avx512();
#elif defined(__aarch64__)
const Kernels& kernels_neon();
const Kernels& kernels_dotprod();
#endif

// `static`: each ISA file compiles its own copy. The epilogue every path shares.
static inline float dequant(int32_t dot, int32_t zero, int32_t rowsum, float a_scale, float w_scale) {
  return static_cast<float>(dot - zero * rowsum) * (a_scale * w_scale);
}

// The pre-transform written once, vectorized by each ISA file's compiler flags (no reduction across j, so no
// reassociation: every ISA computes the same sequence of roundings; built with -ffp-contract=off).
static inline void pre_axpy(const float* pre, const float* x, int64_t K, float* z) {
  for (int64_t j = 0; j < K; ++j) z[j] = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    const float xk = x[k];
    const float* row = pre + k * K;
    for (int64_t j = 0; j < K; ++j) z[j] = z[j] + xk * row[j];
  }
}

}  // namespace spinquant::int8::detail
