// Fast Walsh-Hadamard transform for n = K * 2^k, in place over the rows of a row-major matrix.
//
// Definition (shared with python/spinquant/hadamard.py): y = x @ H_n^T with
// H_n = kron(H_K, H_m) / sqrt(n), m = 2^k, H_m the Sylvester matrix in natural order and H_K a K x K
// +-1 Hadamard matrix supplied by the caller (K = 1: pure power of two). With a row viewed as [K, m]
// (i = a * m + b): FWHT over b for every a, then y[a', b] = sum_a H_K[a', a] * x[a, b], then * 1/sqrt(n).
// Every ISA path computes the same additions in the same order, so results are bit-identical to the
// scalar reference.
#pragma once

#include <cstdint>
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
}  // namespace detail

}  // namespace spinquant
