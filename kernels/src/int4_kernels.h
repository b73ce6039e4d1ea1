// Internal interface between the int4 driver (int4_dispatch.cpp) and its per-ISA kernels.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "spinquant/cpu.h"
#include "spinquant/int4.h"

namespace spinquant::int4::detail {

// One forward pass: activations already quantized (or padded) in the packed K layout.
struct Job {
  const PackedInt4* w;
  int act_bits;           // 4, 8 (codes) or 16 (fp32)
  const uint8_t* codes;   // [M, Kp] activation codes, 0 in padding (act_bits 4 / 8)
  const float* a_scale;   // [M]
  const int32_t* a_zero;  // [M]
  const int32_t* a_gsum;  // [M, G] sum of codes per group
  const float* xpad;      // [M, Kp] fp32 activations, 0 in padding (act_bits 16)
  const float* x_gsum;    // [M, G] sum of activations per group, in input order
  const float* bias;      // [N] or null
  float* y;               // [M, N]
};

// Computes y for tokens [m0, m1) and row blocks [b0, b1).
using BlockFn = void (*)(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1);
// Quantizes one row (see quantize_activations in int4.h).
using QuantFn = void (*)(const float* x, int64_t K, int bits, float clip, uint8_t* codes, float* scale,
                         int32_t* zero);

struct Kernels {
  QuantFn quantize;
  BlockFn gemm_codes;  // act_bits 4 / 8
  BlockFn gemm_f32;    // act_bits 16
};

const Kernels& kernels_ref();
#if defined(__x86_64__)
const Kernels& kernels_avx2();
const Kernels& kernels_avx512();
#elif defined(__aarch64__)
const Kernels& kernels_neon();
const Kernels& kernels_dotprod();
const Kernels& kernels_i8mm();
#endif

// Shared scalar helpers.
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);  // round to nearest even (the tests make their scales with it)

// Scale and zero point of one row from its min and max: the part of quantize_activations every
// ISA shares (compiled once, so all paths round identically).
void act_params(float lo, float hi, int bits, float clip, float* scale, int32_t* zero, float* fzero);

// Decode (one token) streams the codes once: the x86 paths prefetch this far ahead in the codes, past the end
// of a matrix into the next one packed after it (prepacking happens in call order). Tuned on SmolLM2's shapes
// (AMD EPYC, AVX-512): 8 KiB gave the fastest decode GEMVs from DRAM (1 KiB - 32 KiB tried).
constexpr int64_t kPrefetchBytes = 8192;

// `static`: each file gets its own copy, compiled for its own ISA (no cross-ISA inline merging).
// Number of valid rows in block b.
static inline int block_rows(const PackedInt4& w, int64_t b) {
  int64_t left = w.N - b * kRows;
  return left < kRows ? static_cast<int>(left) : kRows;
}

// Calls f(std::integral_constant<int, C>()) with C the 64-byte chunks every group of w holds when the layout is
// uniform (no padding, groups dividing K) and C is 2, 4, 8 or 16 (groups 16-128), else C = 0: the decode loops
// unroll a group's chunks for the first.
template <class F>
static inline void with_uniform_chunks(const PackedInt4& w, F&& f) {
  switch (w.Kp == w.K && w.K % w.group == 0 ? w.group / 8 : 0) {
    case 2: return f(std::integral_constant<int, 2>());
    case 4: return f(std::integral_constant<int, 4>());
    case 8: return f(std::integral_constant<int, 8>());
    case 16: return f(std::integral_constant<int, 16>());
    default: return f(std::integral_constant<int, 0>());
  }
}

static inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace spinquant::int4::detail
