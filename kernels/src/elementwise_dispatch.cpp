// Dispatch of the element-wise kernels: argument checks, the ISA's table, rows split over the pool when an
// input is large enough to pay for a second thread (prefill; decode's single rows stay on the caller).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "elementwise_simd.h"
#include "spinquant/cpu.h"
#include "spinquant/elementwise.h"
#include "spinquant/parallel.h"

namespace spinquant {
namespace {

constexpr int64_t kMinFloatsPerThread = int64_t{1} << 15;

const detail::ElementwiseKernels& kernels() {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::Avx512: return detail::elementwise_avx512();
    case Isa::Avx2: return detail::elementwise_avx2();
#elif defined(__aarch64__)
    case Isa::I8mm:
    case Isa::Dotprod:
    case Isa::Neon: return detail::elementwise_neon();
#endif
    default: return detail::elementwise_ref();
  }
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

// Runs fn(r0, r1) over [0, rows), on several threads only when there are many floats.
template <class F>
void by_rows(int64_t rows, int64_t floats_per_row, int threads, F&& fn) {
  if (rows * floats_per_row < 2 * kMinFloatsPerThread || threads == 1) {
    fn(int64_t{0}, rows);
    return;
  }
  parallel_for(rows, threads, [&](int64_t r0, int64_t r1) { fn(r0, r1); });
}

}  // namespace

void rms_norm(const float* x, const float* weight, int64_t rows, int64_t n, float eps, float* y, int threads) {
  require(rows >= 0 && n >= 1, "rms_norm: needs n >= 1 and rows >= 0");
  const auto& k = kernels();
  by_rows(rows, n, threads, [&](int64_t r0, int64_t r1) { k.rms_norm(x + r0 * n, weight, r1 - r0, n, eps, y + r0 * n); });
}

void silu_mul(const float* gate_up, int64_t rows, int64_t f, float* y, int threads) {
  require(rows >= 0 && f >= 0, "silu_mul: needs rows, f >= 0");
  const auto& k = kernels();
  by_rows(rows, 2 * f, threads, [&](int64_t r0, int64_t r1) { k.silu_mul(gate_up + r0 * 2 * f, r1 - r0, f, y + r0 * f); });
}

void rope(const float* x, const float* cos, const float* sin, int64_t T, int64_t H, int64_t D, float* y, int threads) {
  require(T >= 0 && H >= 0 && D >= 0 && D % 2 == 0, "rope: needs T, H >= 0 and an even head_dim D");
  const auto& k = kernels();
  by_rows(T, H * D, threads, [&](int64_t t0, int64_t t1) {
    k.rope(x + t0 * H * D, cos + t0 * D, sin + t0 * D, t1 - t0, H, D, y + t0 * H * D);
  });
}

void add(const float* a, const float* b, int64_t n, float* y, int threads) {
  require(n >= 0, "add: needs n >= 0");
  const auto& k = kernels();
  constexpr int64_t kChunk = 4096;
  by_rows((n + kChunk - 1) / kChunk, kChunk, threads, [&](int64_t c0, int64_t c1) {
    const int64_t begin = c0 * kChunk, end = std::min(n, c1 * kChunk);
    k.add(a + begin, b + begin, end - begin, y + begin);
  });
}

int64_t argmax(const float* x, int64_t n) {
  require(n >= 1, "argmax: needs n >= 1");
  return kernels().argmax(x, n);
}

}  // namespace spinquant
