// The int8 dispatch table and driver: validate, apply `pre`, quantize the activations per token (int4.h's
// quantizer, so the convention is the one fake quantizer), then split rows (and tokens) over the thread pool.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "int8_kernels.h"
#include "spinquant/cpu.h"
#include "spinquant/int4.h"
#include "spinquant/parallel.h"

namespace spinquant::int8 {
namespace {

const detail::Kernels& select(Isa isa) {
  switch (isa) {
#if defined(__x86_64__)
    case Isa::Avx2: return detail::kernels_avx2();
    case Isa::Avx512: return detail::kernels_avx512();
#elif defined(__aarch64__)
    case Isa::Neon: return detail::kernels_neon();
    case Isa::Dotprod:
    case Isa::I8mm: return detail::kernels_dotprod();
#endif
    default: return detail::kernels_ref();
  }
}

void check_weight(const Weight& w) {
  if (w.N < 1 || w.K < 1 || !w.codes || !w.scales || !w.rowsum)
    throw std::invalid_argument("int8: the weight needs N, K >= 1 and codes, scales and row sums");
}

// Rows a decode claim takes at least: ~4 KiB of codes.
int64_t decode_grain(const Weight& w) { return std::max<int64_t>(1, 4096 / w.K); }

}  // namespace

void row_sums(const int8_t* codes, int64_t N, int64_t K, int32_t* out) {
  for (int64_t n = 0; n < N; ++n) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += codes[n * K + k];
    out[n] = s;
  }
}

void linear(const Weight& w, const float* x, int64_t M, float* y, const float* pre, int threads) {
  check_weight(w);
  if (M < 0) throw std::invalid_argument("int8 linear: M must be >= 0");
  if (M == 0) return;
  const detail::Kernels& kern = select(active_isa());
  const int64_t Kp = (w.K + 63) / 64 * 64;
  thread_local std::vector<uint8_t> codes;
  thread_local std::vector<float> scale, z;
  thread_local std::vector<int32_t> zero;
  codes.assign(static_cast<size_t>(M * Kp), 0);
  scale.resize(static_cast<size_t>(M));
  zero.resize(static_cast<size_t>(M));
  if (pre) z.resize(static_cast<size_t>(M * w.K));
  // Plain pointers: the workers must not name this thread's thread_local buffers (they would get their own).
  const detail::Acts acts{codes.data(), scale.data(), zero.data(), Kp};
  uint8_t* a_codes = codes.data();
  float *a_scale = scale.data(), *zbuf = z.data();
  int32_t* a_zero = zero.data();
  parallel_for(M, plan_threads(M * w.K * (pre ? w.K : 1) / 4096 + 1, threads), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* row = x + m * w.K;
      if (pre) {
        kern.pre(pre, row, w.K, zbuf + m * w.K);
        row = zbuf + m * w.K;
      }
      int4::quantize_activations(row, w.K, 8, 1.0f, a_codes + m * Kp, a_scale + m, a_zero + m);
    }
  });
  if (M == 1) {
    parallel_for_balanced(w.N, plan_threads(w.N, threads), decode_grain(w),
                          [&](int64_t n0, int64_t n1) { kern.gemm(w, acts, 0, 1, n0, n1, y); });
    return;
  }
  constexpr int64_t kBlock = 64;  // rows a task: their codes stay in L2 while every token passes over them
  const int64_t blocks = (w.N + kBlock - 1) / kBlock;
  parallel_for(blocks, threads, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      kern.gemm(w, acts, 0, M, b * kBlock, std::min(w.N, (b + 1) * kBlock), y);
  });
}

void embedding(const Weight& w, const int64_t* ids, int64_t T, float* out, int threads) {
  if (w.N < 1 || w.K < 1 || !w.codes || !w.scales)
    throw std::invalid_argument("int8 embedding: the table needs N, K >= 1, codes and scales");
  for (int64_t t = 0; t < T; ++t)
    if (ids[t] < 0 || ids[t] >= w.N)
      throw std::invalid_argument("int8 embedding: token id " + std::to_string(ids[t]) + " is outside the vocabulary [0, " +
                                  std::to_string(w.N) + ")");
  parallel_for(T, plan_threads(T * w.K / 8192 + 1, threads), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int8_t* q = w.codes + ids[t] * w.K;
      const float s = w.scales[ids[t]];
      float* o = out + t * w.K;
      for (int64_t k = 0; k < w.K; ++k) o[k] = static_cast<float>(q[k]) * s;
    }
  });
}

}  // namespace spinquant::int8
