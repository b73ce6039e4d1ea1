// Fast Walsh-Hadamard transform for n = K * 2^k, in place over the rows of a row-major matrix.
//
// Definition (shared with python/spinquant/hadamard.py): y = x @ H_n^T with
// H_n = kron(H_K, H_m) / sqrt(n), m = 2^k, H_m the Sylvester matrix in natural order and H_K a K x K
// +-1 Hadamard matrix supplied by the caller (K = 1: pure power of two). With a row viewed as [K, m]
// (i = a * m + b): FWHT over b for every a, then y[a', b] = sum_a H_K[a', a] * x[a, b], then * 1/sqrt(n).
// Every ISA path computes the same additions in the same order, so results are bit-identical to the
// scalar reference.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace spinquant {

// A validated transform of one size: checks n = K * 2^k, that hk is K x K with entries +-1 and
// H_K H_K^T = K I (O(K^3) once). Throws std::invalid_argument naming the problem.
class HadamardTransform {
 public:
  // hk: row-major int8 [K * K] (+1/-1), may be nullptr when K == 1.
  HadamardTransform(int64_t n, const int8_t* hk, int64_t K);

  // In place over `rows` contiguous rows of n floats; threads <= 0 uses every core for big batches.
  void apply(float* x, int64_t rows, int threads = 0) const;
  // The same over IEEE fp16 storage (bits in uint16_t): each row widened to fp32, transformed, rounded back
  // to nearest even -- exactly the fp32 result rounded to fp16.
  void apply_f16(uint16_t* x, int64_t rows, int threads = 0) const;

  int64_t n() const { return n_; }
  int64_t K() const { return K_; }
  int64_t m() const { return m_; }
  float scale() const { return scale_; }
  // H_K as floats (+1.0f / -1.0f), row-major [K * K], used by the kernels.
  const float* hk() const { return hk_.data(); }

 private:
  int64_t n_, K_, m_;
  float scale_;
  std::vector<float> hk_;
};

// One-shot convenience: validates and applies (prefer HadamardTransform for repeated calls).
void hadamard_transform(float* x, int64_t rows, int64_t n, const int8_t* hk, int64_t K, int threads = 0);

// IEEE binary16 <-> binary32 (round to nearest even; NaN stays NaN, overflow gives infinity).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24 is exact in float
    const float mag = static_cast<float>(mant) * 0x1p-24f;
    return sign ? -mag : mag;
  }
  const uint32_t bits = sign | (exp == 31 ? 0x7F800000u | (mant << 13) : ((exp + 112) << 23) | (mant << 13));
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_half(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7E00u | ((bits >> 13) & 0x3FFu));
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds past the largest half, 65504
  if (a < 6.103515625e-05f)  // below 2^-14: subnormal, in units of 2^-24 (1024 units is the smallest normal)
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(a * 0x1p24f)));
  const uint32_t m = bits & 0x7FFFFFu, rem = m & 0x1FFFu;
  uint32_t h = ((((bits >> 23) & 0xFFu) - 112) << 10) | (m >> 13);
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // to nearest even; a carry moves into the exponent
  return static_cast<uint16_t>(sign | h);
}

// True if hk (row-major [K * K]) has entries +-1 and H H^T = K I.
bool is_hadamard_matrix(const int8_t* hk, int64_t K);

namespace detail {
// One row, in place: FWHT over each of the K segments of length m, mix by H_K, scale.
// `scratch` holds n floats (unused when K == 1). Implemented per ISA; the scalar one is the reference.
using HadamardRowFn = void (*)(float* x, const HadamardTransform& t, float* scratch);
void hadamard_row_ref(float* x, const HadamardTransform& t, float* scratch);
#if defined(__x86_64__)
void hadamard_row_avx2(float* x, const HadamardTransform& t, float* scratch);
void hadamard_row_avx512(float* x, const HadamardTransform& t, float* scratch);
#elif defined(__aarch64__)
void hadamard_row_neon(float* x, const HadamardTransform& t, float* scratch);
#endif
// The row kernel for the active ISA (see cpu.h).
HadamardRowFn hadamard_row_kernel();

// fp16 <-> fp32 over n values, per ISA (F16C, NEON fcvt); bit-identical to half_to_float / float_to_half
// except for NaN payloads.
struct HalfConverters {
  void (*widen)(const uint16_t* in, float* out, int64_t n);
  void (*narrow)(const float* in, uint16_t* out, int64_t n);
};
HalfConverters half_converters();
void widen_f16_ref(const uint16_t* in, float* out, int64_t n);
void narrow_f16_ref(const float* in, uint16_t* out, int64_t n);
#if defined(__x86_64__)
void widen_f16_avx2(const uint16_t* in, float* out, int64_t n);
void narrow_f16_avx2(const float* in, uint16_t* out, int64_t n);
#elif defined(__aarch64__)
void widen_f16_neon(const uint16_t* in, float* out, int64_t n);
void narrow_f16_neon(const float* in, uint16_t* out, int64_t n);
#endif
}  // namespace detail

}  // namespace spinquant
