#include "spinquant/peak.h"

#include <atomic>
#include <chrono>
#include <stdexcept>

#include "peak_simd.h"
#include "spinquant/cpu.h"
#include "spinquant/parallel.h"

namespace spinquant {
namespace detail {
namespace {

uint64_t run_ref(int64_t iterations) {
  int32_t acc[kPeakChains];
  for (int i = 0; i < kPeakChains; ++i) acc[i] = i;
  volatile int8_t seed = 3;  // read once: the multiply stays in the loop
  const int32_t a = seed, w = -2 * a;
  for (int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < kPeakChains; ++i) acc[i] = acc[i] * 7 + a * w;  // a dependent multiply-add a chain
  uint64_t sum = 0;
  for (int32_t v : acc) sum += static_cast<uint32_t>(v);
  return sum;
}

}  // namespace

PeakLoop peak_loop_ref() { return {run_ref, 1.0 * kPeakChains, "int32 multiply-add, baseline C++"}; }

}  // namespace detail

namespace {

detail::PeakLoop peak_loop() {
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::Avx512: return detail::peak_loop_avx512();
    case Isa::Avx2: return detail::peak_loop_avx2();
#elif defined(__aarch64__)
    case Isa::Dotprod: return detail::peak_loop_dotprod();
    case Isa::I8mm: return detail::peak_loop_i8mm();
#endif
    default: return detail::peak_loop_ref();
  }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Int8Peak int8_peak(int threads, double seconds) {
  if (threads < 1) throw std::invalid_argument("int8_peak: threads must be >= 1");
  if (!(seconds > 0.0 && seconds <= 60.0)) throw std::invalid_argument("int8_peak: seconds must be in (0, 60]");
  const detail::PeakLoop loop = peak_loop();
  // Size the run on one thread first (~1/20 of it), then time all threads together, one unit each.
  int64_t iterations = 1 << 10;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    loop.run(iterations);
    const double t = seconds_since(t0);
    if (t >= seconds / 20) {
      iterations = static_cast<int64_t>(static_cast<double>(iterations) * seconds / t) + 1;
      break;
    }
    iterations *= 4;
  }
  std::atomic<uint64_t> checksum{0};
  const auto t0 = std::chrono::steady_clock::now();
  parallel_for(threads, threads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) checksum.fetch_add(loop.run(iterations), std::memory_order_relaxed);
  });
  const double t = seconds_since(t0);
  if (checksum.load() == 1) throw std::logic_error("int8_peak: impossible checksum");  // keeps the sums live
  return {static_cast<double>(threads) * static_cast<double>(iterations) * loop.macs_per_iteration / t,
          loop.instruction};
}

}  // namespace spinquant
