// HadamardTransform: validation, the per-ISA row kernel choice and the split of rows over threads.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "spinquant/cpu.h"
#include "spinquant/hadamard.h"
#include "spinquant/parallel.h"

namespace spinquant {

namespace {

constexpr int64_t kMinFloatsPerThread = int64_t{1} << 15;  // below this a thread costs more than it saves

std::string size_error(int64_t n, int64_t K) {
  return "hadamard: n=" + std::to_string(n) + " is not K * 2^k for K=" + std::to_string(K) +
         "; pass the K x K Hadamard matrix whose K times a power of two equals n";
}

// threads <= 0: one per core, but only as many as the work pays for.
int pick_threads(int threads, int64_t rows, int64_t n) {
  if (threads > 0) return threads;
  return static_cast<int>(std::clamp<int64_t>((rows * n) / kMinFloatsPerThread, 1, hardware_threads()));
}

// n floats of this thread's scratch, grown once and reused (decode transforms one short row a call).
float* thread_scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

}  // namespace

bool is_hadamard_matrix(const int8_t* hk, int64_t K) {
  if (hk == nullptr || K <= 0) return false;
  for (int64_t i = 0; i < K * K; ++i)
    if (hk[i] != 1 && hk[i] != -1) return false;
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = i; j < K; ++j) {
      int64_t dot = 0;
      for (int64_t c = 0; c < K; ++c) dot += hk[i * K + c] * hk[j * K + c];
      if (dot != (i == j ? K : 0)) return false;
    }
  return true;
}

HadamardTransform::HadamardTransform(int64_t n, const int8_t* hk, int64_t K) : n_(n), K_(K) {
  if (n <= 0) throw std::invalid_argument("hadamard: n must be positive, got " + std::to_string(n));
  if (K <= 0) throw std::invalid_argument("hadamard: K must be positive, got " + std::to_string(K));
  if (n % K != 0) throw std::invalid_argument(size_error(n, K));
  m_ = n / K;
  if ((m_ & (m_ - 1)) != 0) throw std::invalid_argument(size_error(n, K));
  if (K > 1 && hk == nullptr)
    throw std::invalid_argument("hadamard: K=" + std::to_string(K) + " needs its K x K matrix (got none)");
  if (hk != nullptr && !is_hadamard_matrix(hk, K))
    throw std::invalid_argument("hadamard: the given " + std::to_string(K) + "x" + std::to_string(K) +
                                " matrix is not Hadamard (entries must be +-1 and H H^T = K I)");
  scale_ = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  hk_.resize(static_cast<size_t>(K * K));
  for (int64_t i = 0; i < K * K; ++i) hk_[i] = (hk != nullptr && hk[i] < 0) ? -1.0f : 1.0f;
}

void HadamardTransform::apply(float* x, int64_t rows, int threads) const {
  if (rows < 0) throw std::invalid_argument("hadamard: rows must be >= 0, got " + std::to_string(rows));
  if (rows == 0) return;
  if (x == nullptr) throw std::invalid_argument("hadamard: null data pointer");
  const detail::HadamardRowFn row = detail::hadamard_row_kernel();
  parallel_for(rows, pick_threads(threads, rows, n_), [&](int64_t r0, int64_t r1) {
    float* scratch = thread_scratch(K_ > 1 ? n_ : 0);
    for (int64_t r = r0; r < r1; ++r) row(x + r * n_, *this, scratch);
  });
}

void HadamardTransform::apply_f16(uint16_t* x, int64_t rows, int threads) const {
  if (rows < 0) throw std::invalid_argument("hadamard: rows must be >= 0, got " + std::to_string(rows));
  if (rows == 0) return;
  if (x == nullptr) throw std::invalid_argument("hadamard: null data pointer");
  const detail::HadamardRowFn row = detail::hadamard_row_kernel();
  const detail::HalfConverters cvt = detail::half_converters();
  parallel_for(rows, pick_threads(threads, rows, n_), [&](int64_t r0, int64_t r1) {
    float* buf = thread_scratch(2 * n_);  // the widened row, then the K-mixing scratch
    for (int64_t r = r0; r < r1; ++r) {
      cvt.widen(x + r * n_, buf, n_);
      row(buf, *this, buf + n_);
      cvt.narrow(buf, x + r * n_, n_);
    }
  });
}

void hadamard_transform(float* x, int64_t rows, int64_t n, const int8_t* hk, int64_t K, int threads) {
  HadamardTransform(n, hk, K).apply(x, rows, threads);
}

namespace detail {

HadamardRowFn hadamard_row_kernel() {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::Avx512: return hadamard_row_avx512;
    case Isa::Avx2: return hadamard_row_avx2;
#elif defined(__aarch64__)
    case Isa::I8mm:
    case Isa::Dotprod:
    case Isa::Neon: return hadamard_row_neon;
#endif
    default: return hadamard_row_ref;
  }
}

HalfConverters half_converters() {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::Avx512:
    case Isa::Avx2: return {widen_f16_avx2, narrow_f16_avx2};
#elif defined(__aarch64__)
    case Isa::I8mm:
    case Isa::Dotprod:
    case Isa::Neon: return {widen_f16_neon, narrow_f16_neon};
#endif
    default: return {widen_f16_ref, narrow_f16_ref};
  }
}

}  // namespace detail

}  // namespace spinquant
