"""Native fast Walsh-Hadamard transform vs memcpy of the same bytes and vs PyTorch references.

    PYTHONPATH=python python benchmarks/bench_hadamard.py [--threads 1] [--sizes 64 512 576 1536 4096 14336]

Two regimes, each against a memcpy (torch copy_) of the same bytes measured in the same run:
hot = a batch of rows that stays in L2 (--hot-kib), stream = a batch far larger than the L3 cache
(--stream-mib). Times are the fastest single call over ~0.3 s (robust to other load on a shared
machine); prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import time
from collections.abc import Callable

import torch

from spinquant import kernels
from spinquant.hadamard import hadamard_decomposition, hadamard_matrix, hadamard_transform

DENSE_MAX = 4096  # the dense x @ H^T reference needs an n x n matrix


def best_time(fn: Callable[[], object], seconds: float = 0.3) -> float:
    """Fastest single call (seconds) over about `seconds` of calls: the least disturbed by other load."""
    fn()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_batch(t: kernels.FastHadamard, n: int, nbytes: int, regime: str) -> dict[str, float]:
    """ns per vector and GB/s of the kernel and of memcpy (torch copy_) on a batch of about nbytes."""
    rows = max(1, nbytes // (4 * n))
    x = torch.randn(rows, n)
    y = torch.empty_like(x)
    fwht = best_time(lambda: t.apply_(x))
    copy = best_time(lambda: y.copy_(x))
    gb = x.numel() * 4 / 1e9
    out = {f"{regime}_ns": fwht / rows * 1e9, f"{regime}_gbs": gb / fwht, f"{regime}_memcpy_gbs": gb / copy}
    if regime == "hot":
        x16 = x.half()
        out["hot_f16_ns"] = best_time(lambda: t.apply_(x16)) / rows * 1e9
        out["torch_fact_ns"] = best_time(lambda: hadamard_transform(x)) / rows * 1e9
        if n <= DENSE_MAX:
            h = hadamard_matrix(n, dtype=torch.float32) / math.sqrt(n)
            out["torch_dense_ns"] = best_time(lambda: x @ h.T) / rows * 1e9
    return out


def bench_size(n: int, hot_bytes: int, stream_bytes: int, threads: int) -> dict[str, float]:
    """Both regimes for one size: hot (batch in L2) and streaming (batch far beyond L3)."""
    t = kernels.FastHadamard(n, threads=threads)
    return {**bench_batch(t, n, hot_bytes, "hot"), **bench_batch(t, n, stream_bytes, "stream")}


def header(threads: int) -> str:
    """Date, machine, ISA, threads and load average: the first line of every result table."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{now}; {platform.machine()}, isa {kernels.active_isa()}, threads {threads}, load average {load}\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 576, 1536, 4096, 14336])
    p.add_argument("--threads", type=int, default=1, help="native and torch threads")
    p.add_argument("--hot-kib", type=int, default=256)
    p.add_argument("--stream-mib", type=int, default=128)
    p.add_argument("--isa", default=None, help="force one ISA (default: best)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.isa:
        kernels._kernels.force_isa(args.isa)
    print(header(args.threads))
    print(
        "| n (K x 2^k) | ns/vector (hot) | fp16 storage ns/vec | GB/s hot / memcpy | % | GB/s stream / memcpy | % "
        "| torch factored ns/vec | torch dense x@H ns/vec |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        k, m = hadamard_decomposition(n)
        r = bench_size(n, args.hot_kib << 10, args.stream_mib << 20, args.threads)
        dense = f"{r['torch_dense_ns']:.0f}" if "torch_dense_ns" in r else "-"
        print(
            f"| {n} ({k} x {m}) | {r['hot_ns']:.0f} | {r['hot_f16_ns']:.0f} "
            f"| {r['hot_gbs']:.1f} / {r['hot_memcpy_gbs']:.1f} "
            f"| {100 * r['hot_gbs'] / r['hot_memcpy_gbs']:.0f} | {r['stream_gbs']:.1f} / {r['stream_memcpy_gbs']:.1f} "
            f"| {100 * r['stream_gbs'] / r['stream_memcpy_gbs']:.0f} | {r['torch_fact_ns']:.0f} | {dense} |"
        )


if __name__ == "__main__":
    main()
