// A small persistent thread pool shared by every kernel family.
//
//   spinquant::parallel_for(n, threads, [&](int64_t begin, int64_t end) { ... });
//
// splits [0, n) into at most `threads` contiguous, nearly equal ranges (0 = one per core), the longer ones
// first, and runs them on the pool, the calling thread taking the first range and the workers the last ones; it
// returns when all are done and rethrows the first exception a range threw. Calls made from inside a range run
// serially, and concurrent callers take turns, so kernels may call it freely.
//
//   spinquant::prefetch_when_idle({next, bytes});
//
// lets idle workers pull memory the next parallel_for's last ranges will read into their caches while
// the caller runs serial code (a decode step's norms, RoPE and attention between two matrix products).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace spinquant {

// Number of hardware threads (at least 1).
int hardware_threads();

// Number of ranges parallel_for would use for `n` items and a `threads` request (0 = all cores).
int plan_threads(int64_t n, int threads);

struct ByteSpan {
  const void* data = nullptr;
  size_t bytes = 0;
};

// Replaces the idle workers' prefetch request (empty spans cancel it); it is served while no region runs.
void prefetch_when_idle(ByteSpan first, ByteSpan second = {});

void parallel_for(int64_t n, int threads, const std::function<void(int64_t begin, int64_t end)>& fn);

// Like parallel_for, for work whose pieces may run at uneven speed (a decode GEMV sharing the memory bus with
// other tenants): each thread first claims first_share(n, t) items, the caller from the front and the workers
// from the back, then the rest goes in shrinking pieces (half of a thread's fair share of what is left, at least
// `grain` items) to whichever thread is free, so no core waits long for a slow one.
void parallel_for_balanced(int64_t n, int threads, int64_t grain,
                           const std::function<void(int64_t begin, int64_t end)>& fn);

// Items of a thread's first claim in parallel_for_balanced on t threads: the caller takes [0, share), the first
// worker [n - share, n). 7/8 of an even split, at least 1.
int64_t first_share(int64_t n, int threads);

}  // namespace spinquant
