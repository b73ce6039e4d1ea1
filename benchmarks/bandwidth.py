"""Bandwidth figures for the kernel micro-benchmarks' extra_info.

The read floor is one read of a buffer far larger than L3 on the kernels' own threads (`spinquant::read_bytes`),
measured once per thread count in the same run: a reference for the benchmarks, not one of them, so it is timed
here rather than by pytest-benchmark (whose fixture times one benchmark a test).
"""

from __future__ import annotations

import functools
import time

import numpy as np

from spinquant import kernels

FLOOR_BYTES = 256 << 20


@functools.cache
def read_floor_gbs(threads: int) -> float:
    """GB/s of the faster of no prefetch and 16 KiB ahead, each the median of 7 reads of FLOOR_BYTES."""
    buf = np.ones(FLOOR_BYTES, dtype=np.uint8)
    best = 0.0
    for prefetch in (0, 16384):
        kernels.read_bytes(buf, threads, prefetch)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            kernels.read_bytes(buf, threads, prefetch)
            times.append(time.perf_counter() - t0)
        best = max(best, FLOOR_BYTES / sorted(times)[3] / 1e9)
    return best


def record_bandwidth(benchmark, nbytes: int, threads: int) -> None:
    """Add bytes read, GB/s and the fraction of the read floor to the benchmark's extra_info (after it ran)."""
    if benchmark.stats is None:  # --benchmark-disable: one plain call, no timing
        return
    gbs = nbytes / benchmark.stats.stats.median / 1e9
    floor = read_floor_gbs(threads)
    benchmark.extra_info.update(
        bytes=nbytes, gbs=round(gbs, 2), floor_gbs=round(floor, 2), of_floor=round(gbs / floor, 3)
    )


def record_gmacs(benchmark, n: int, k: int, m: int) -> None:
    """Multiply-accumulates per second of an M x K by K x N product (after the benchmark ran)."""
    if benchmark.stats is not None:
        benchmark.extra_info["gmac_per_s"] = round(m * n * k / benchmark.stats.stats.median / 1e9, 1)
