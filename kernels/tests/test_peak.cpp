// int8_peak: a positive rate from every supported ISA's loop on one and two threads, and bad arguments rejected.
#include <cstdio>
#include <stdexcept>
#include <utility>

#include "spinquant/cpu.h"
#include "spinquant/peak.h"

int main() {
  int failures = 0;
  using spinquant::Isa;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::Dotprod, Isa::I8mm}) {
    if (!spinquant::isa_supported(isa)) continue;
    spinquant::force_isa(isa);
    for (int threads : {1, 2}) {
      const spinquant::Int8Peak p = spinquant::int8_peak(threads, 0.02);
      std::printf("%s int8 peak, %d thread(s): %.1f GMAC/s (%s)\n", spinquant::isa_name(isa), threads,
                  p.macs_per_s / 1e9, p.instruction);
      if (!(p.macs_per_s > 0.0) || p.instruction == nullptr) ++failures;
    }
  }
  spinquant::reset_isa();
  for (auto [threads, seconds] : {std::pair{0, 0.1}, std::pair{1, 0.0}, std::pair{1, 100.0}}) {
    bool threw = false;
    try {
      spinquant::int8_peak(threads, seconds);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    if (!threw) ++failures;
  }
  std::printf("%s\n", failures == 0 ? "test_peak: all passed" : "test_peak: FAILED");
  return failures == 0 ? 0 : 1;
}
