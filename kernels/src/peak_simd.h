// One ISA's loop for spinquant::int8_peak: `iterations` rounds of kPeakChains independent int8 dot-product
// instructions on registers; returns a checksum (so the work cannot be optimised away).
#pragma once
#include <cstdint>

namespace spinquant::detail {

constexpr int kPeakChains = 16;  // independent accumulators: enough to hide any dot-product latency

struct PeakLoop {
  uint64_t (*run)(int64_t iterations);
  double macs_per_iteration;
  const char* instruction;
};

PeakLoop peak_loop_ref();
#if defined(__x86_64__)
PeakLoop peak_loop_avx2();
PeakLoop peak_loop_avx512();
#elif defined(__aarch64__)
PeakLoop peak_loop_dotprod();
PeakLoop peak_loop_i8mm();
#endif

}  // namespace spinquant::detail
