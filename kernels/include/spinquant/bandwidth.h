// The memory-bandwidth floor of a weight-streaming decode step, measured rather than assumed:
//
//   spinquant::read_bytes({buffer, bytes}, threads);
//
// sums the span's 64-bit words in `threads` contiguous ranges on the kernels' thread pool, prefetching ahead as
// the GEMVs do, i.e. reads it once as fast as that pool can, and returns the sum (so the reads cannot be
// optimised away). Timing it on a buffer the size of a model's weights gives the time no decode step can beat
// on this machine now.
#pragma once
#include <cstdint>

#include "spinquant/parallel.h"

namespace spinquant {

uint64_t read_bytes(ByteSpan span, int threads);

}  // namespace spinquant
