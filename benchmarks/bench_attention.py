"""Decode attention over the native quantized KV cache vs fp32 attention over an fp32 cache (torch SDPA).

    PYTHONPATH=python python benchmarks/bench_attention.py [--threads 1] [--contexts 256 1024 2048]

Prints a markdown table: microseconds per decode step (one new token, one layer) and the ratio to the faster
of two fp32 baselines over an fp32 cache: torch SDPA (enable_gqa) and grouped bmm + softmax. Times are the
fastest single call over ~0.3 s (robust to other load on a shared machine).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from spinquant import kernels

SHAPES = [(9, 3, 64), (32, 8, 128)]  # (n_heads, n_kv_heads, head_dim): SmolLM2-135M and a LLaMA-like shape


def best_time(fn: Callable[[], object], seconds: float = 0.3) -> float:
    """Fastest single call (seconds) over about `seconds` of calls: the least disturbed by other load."""
    fn()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_shape(heads: int, kv: int, hd: int, ctx: int, bits: int, group: int, threads: int) -> dict[str, float]:
    """Microseconds of one decode step at context ctx: native quantized, SDPA fp32, and the native call overhead."""
    g = torch.Generator().manual_seed(ctx)
    k, v = torch.randn(ctx, kv, hd, generator=g), torch.randn(ctx, kv, hd, generator=g)
    q = torch.randn(1, heads, hd, generator=g)
    cache = kernels.QuantKVCache(kv, hd, ctx, bits, group)
    cache.append(k, v, 0)
    k32, v32 = k.transpose(0, 1)[None].contiguous(), v.transpose(0, 1)[None].contiguous()  # [1, Hkv, L, d]
    q32 = q.transpose(0, 1)[None].contiguous()  # [1, H, 1, d]

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q32, k32, v32, enable_gqa=True)

    kt, vb = k32[0].transpose(1, 2).contiguous(), v32[0]  # [Hkv, d, L], [Hkv, L, d]
    qg = q.reshape(kv, heads // kv, hd)  # query heads grouped by their KV head

    def bmm() -> torch.Tensor:
        return torch.softmax(torch.bmm(qg, kt) / hd**0.5, dim=-1).bmm(vb)

    quant = best_time(lambda: cache.attention(q, ctx - 1, threads=threads))
    tiny = kernels.QuantKVCache(kv, hd, 1, bits, group)
    tiny.append(k[:1], v[:1], 0)
    overhead = best_time(lambda: tiny.attention(q, 0, threads=1))
    return {
        "quant": quant * 1e6,
        "sdpa": best_time(sdpa) * 1e6,
        "bmm": best_time(bmm) * 1e6,
        "overhead": overhead * 1e6,
    }


def header(threads: int) -> str:
    """Date, machine, ISA, threads and load average: the first line of every result table."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{now}; {platform.machine()}, isa {kernels.active_isa()}, threads {threads}, load average {load}\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 2048])
    p.add_argument("--threads", type=int, default=1, help="native and torch threads")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 8])
    p.add_argument("--isa", default=None, help="force one ISA (default: best)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.isa:
        kernels._kernels.force_isa(args.isa)
    print(header(args.threads))
    print(
        "| heads / kv / head_dim | context | bits (group) | quantized KV µs | fp32 SDPA µs | fp32 bmm µs "
        "| ratio to the faster fp32 | call overhead µs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for heads, kv, hd in SHAPES:
        for ctx in args.contexts:
            for bits in args.bits:
                r = bench_shape(heads, kv, hd, ctx, bits, hd, args.threads)
                fp32 = min(r["sdpa"], r["bmm"])
                print(
                    f"| {heads} / {kv} / {hd} | {ctx} | {bits} ({hd}) | {r['quant']:.1f} | {r['sdpa']:.1f} "
                    f"| {r['bmm']:.1f} | {r['quant'] / fp32:.2f} | {r['overhead']:.1f} |"
                )


if __name__ == "__main__":
    main()
