"""Decode attention over the native quantized KV cache vs fp32 attention over an fp32 cache (torch SDPA).

    PYTHONPATH=python python benchmarks/bench_attention.py [--threads 1] [--contexts 256 1024 2048]

Prints a markdown table: microseconds per decode step (one new token, one layer) and the ratio to SDPA.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from spinquant import kernels

SHAPES = [(9, 3, 64), (32, 8, 128)]  # (n_heads, n_kv_heads, head_dim): SmolLM2-135M and a LLaMA-like shape


def best_time(fn: Callable[[], object], min_seconds: float = 0.2, repeats: int = 5) -> float:
    """Best over `repeats` of the mean time of a loop lasting about min_seconds (seconds per call)."""
    fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_seconds / repeats:
        fn()
        n += 1
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def bench_shape(
    heads: int, kv: int, hd: int, ctx: int, bits: int, group: int, threads: int, isa: str | None
) -> dict[str, float]:
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

    if isa is None:
        quant = best_time(lambda: cache.attention(q, ctx - 1, threads=threads))
    else:
        with kernels.use_isa(isa):
            quant = best_time(lambda: cache.attention(q, ctx - 1, threads=threads))
    tiny = kernels.QuantKVCache(kv, hd, 1, bits, group)
    tiny.append(k[:1], v[:1], 0)
    overhead = best_time(lambda: tiny.attention(q, 0, threads=1))
    return {"quant": quant * 1e6, "sdpa": best_time(sdpa) * 1e6, "overhead": overhead * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 2048])
    p.add_argument("--threads", type=int, default=1, help="native and torch threads")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 8])
    p.add_argument("--isa", default=None, help="force one ISA (default: best)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, isa={args.isa or kernels.active_isa()}, "
          f"threads={args.threads}, torch {torch.__version__}\n")
    print("| heads / kv / head_dim | context | bits (group) | quantized KV µs | fp32 SDPA µs | ratio | call overhead µs |")
    print("|---|---|---|---|---|---|---|")
    for heads, kv, hd in SHAPES:
        for ctx in args.contexts:
            for bits in args.bits:
                r = bench_shape(heads, kv, hd, ctx, bits, hd, args.threads, args.isa)
                print(f"| {heads} / {kv} / {hd} | {ctx} | {bits} ({hd}) | {r['quant']:.1f} | {r['sdpa']:.1f} | "
                      f"{r['quant'] / r['sdpa']:.2f} | {r['overhead']:.1f} |")


if __name__ == "__main__":
    main()
