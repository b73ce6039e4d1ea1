// The int8 compute peak of this CPU, measured on our own loop:
//
//   spinquant::Int8Peak p = spinquant::int8_peak(threads, seconds);
//
// runs independent chains of the int8 dot-product instruction the int4 GEMMs of the active ISA are built on
// (AVX-512 VNNI vpdpbusd; AVX2 vpmaddubsw + vpmaddwd + vpaddd; arm64 sdot, or smmla with i8mm; a scalar loop
// elsewhere) from registers only, on `threads` threads of the kernels' pool at once, for about `seconds`, and
// reports multiply-accumulates per second. A prefill GEMM's MAC/s over it is the fraction of the compute peak it
// reaches, as a decode step's time over read_bytes' is of the bandwidth floor.
#pragma once
#include <cstdint>

namespace spinquant {

struct Int8Peak {
  double macs_per_s;        // all threads together
  const char* instruction;  // what the loop ran, e.g. "vpdpbusd zmm"
};

Int8Peak int8_peak(int threads, double seconds = 0.2);

}  // namespace spinquant
