// Scalar reference of the int4 kernels, reading the packed layout exactly as the SIMD paths do;
// it defines the results the other ISAs must reproduce (bit for bit on the integer paths).
#include <cmath>

#include "../int4_kernels.h"

namespace spinquant::int4::detail {
namespace {

void quantize_ref(const float* x, int64_t K, int bits, float clip, uint8_t* codes, float* scale,
                  int32_t* zero) {
  float lo = x[0], hi = x[0];
  for (int64_t k = 1; k < K; ++k) {
    lo = x[k] < lo ? x[k] : lo;
    hi = x[k] > hi ? x[k] : hi;
  }
  float s, fz;
  act_params(lo, hi, bits, clip, &s, zero, &fz);
  *scale = s;
  const float qmax = static_cast<float>((1 << bits) - 1);
  for (int64_t k = 0; k < K; ++k) {
    float q = std::nearbyint(x[k] / s) + fz;
    q = q > 0.0f ? (q < qmax ? q : qmax) : 0.0f;  // nan -> 0, as the SIMD paths do
    codes[k] = static_cast<uint8_t>(q);
  }
}

// Code of row r at padded position p of block b.
inline int code_at(const uint8_t* block, int64_t p, int r) {
  const uint8_t byte = block[p / 8 * 64 + 4 * r + (p & 3)];
  return (p & 4) ? (byte >> 4) : (byte & 0x0f);
}

void gemm_codes_ref(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  const PackedInt4& w = *job.w;
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* block = w.codes.data() + b * w.Kp * 8;
    const int rows = block_rows(w, b);
    for (int64_t m = m0; m < m1; ++m) {
      const uint8_t* a = job.codes + m * w.Kp;
      const float sa = job.a_scale[m];
      for (int r = 0; r < rows; ++r) {
        float acc = 0.0f;
        for (int64_t g = 0; g < w.G; ++g) {
          int32_t dot = 0;
          for (int64_t p = w.goff[g]; p < w.goff[g + 1]; ++p) dot += a[p] * code_at(block, p, r);
          const int64_t meta = (b * w.G + g) * kRows + r;
          const int32_t z = w.asymmetric ? w.zeros[meta] : 8;
          const int32_t i = dot - z * job.a_gsum[m * w.G + g];
          acc = std::fma(sa * half_to_float(w.scales[meta]), static_cast<float>(i), acc);
        }
        const int64_t n = b * kRows + r;
        float y = std::fma(-(sa * static_cast<float>(job.a_zero[m])), w.corr[n], acc);
        if (job.bias != nullptr) y = y + job.bias[n];
        job.y[m * w.N + n] = y;
      }
    }
  }
}

void gemm_f32_ref(const Job& job, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  const PackedInt4& w = *job.w;
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* block = w.codes.data() + b * w.Kp * 8;
    const int rows = block_rows(w, b);
    for (int64_t m = m0; m < m1; ++m) {
      const float* x = job.xpad + m * w.Kp;
      for (int r = 0; r < rows; ++r) {
        float acc = 0.0f;
        for (int64_t g = 0; g < w.G; ++g) {
          float dot = 0.0f;
          for (int64_t p = w.goff[g]; p < w.goff[g + 1]; ++p)
            dot = std::fma(x[p], static_cast<float>(code_at(block, p, r)), dot);
          const int64_t meta = (b * w.G + g) * kRows + r;
          const float z = w.asymmetric ? w.zeros[meta] : 8.0f;
          acc = std::fma(half_to_float(w.scales[meta]), std::fma(-z, job.x_gsum[m * w.G + g], dot), acc);
        }
        const int64_t n = b * kRows + r;
        job.y[m * w.N + n] = job.bias != nullptr ? acc + job.bias[n] : acc;
      }
    }
  }
}

}  // namespace

const Kernels& kernels_ref() {
  static const Kernels k{quantize_ref, gemm_codes_ref, gemm_f32_ref};
  return k;
}

}  // namespace spinquant::int4::detail
