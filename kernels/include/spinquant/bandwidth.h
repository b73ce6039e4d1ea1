// The memory-bandwidth floor of a weight-streaming decode step, measured rather than assumed:
//
//   spinquant::read_bytes({buffer, bytes}, threads, prefetch_bytes);
//
// sums the span's 64-bit words in `threads` contiguous ranges on the kernels' thread pool with the widest loads
// this CPU has, optionally prefetching `prefetch_bytes` ahead, and returns the sum (so the reads cannot be
// optimised away). Timing it on a buffer the size of a model's weights gives the time no decode step can beat
// on this machine now. Which prefetch distance reads fastest depends on the CPU (an AMD EPYC: none; an Intel
// Xeon core read three times faster with 16 KiB, measured with the baseline loop), so a caller measuring a floor
// tries both.
#pragma once
#include <cstdint>

#include "spinquant/parallel.h"

namespace spinquant {

uint64_t read_bytes(ByteSpan span, int threads, int64_t prefetch_bytes = 16384);

}  // namespace spinquant
