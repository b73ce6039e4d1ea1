"""int4 GEMV (decode, M=1) speed: spinquant's native kernels vs torch fp32 and torchao 8da4w, side by side.

Prints a markdown table: median microseconds, effective GB/s (bytes of packed weights + scales per call)
and that as a fraction of the single-thread read bandwidth measured in the same run.

    PYTHONPATH=python python benchmarks/bench_int4.py [--repeats 50] [--shapes 576x576,4096x4096]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from spinquant import kernels

# SmolLM2-135M projections (N x K: q/o, k/v, gate/up, down, lm_head), then 4096-wide matrices about L3-sized
# and larger (14336x4096 is 31.5 MiB packed, 28672x4096 twice that).
DEFAULT_SHAPES = "576x576,192x576,1536x576,576x1536,49152x576,4096x4096,14336x4096,28672x4096"
GROUP = 32


def median_us(fn: Callable[[], object], repeats: int, min_seconds: float = 0.2) -> float:
    """Median wall time of fn() in microseconds, after one warm-up call."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 20 * repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def read_bandwidth_gbs(mbytes: int = 512) -> float:
    """Single-thread read bandwidth: numpy sum over a buffer far larger than L3 (median of 5)."""
    buf = np.ones(mbytes * 2**20 // 8, dtype=np.float64)
    buf.sum()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    return buf.nbytes / statistics.median(times) / 1e9


def lscpu() -> dict[str, str]:
    """lscpu's fields (empty when lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def l3_bytes(fields: dict[str, str]) -> int:
    """L3 size from lscpu ("32 MiB (1 instance)"); 32 MiB when unknown."""
    value = fields.get("L3 cache", "32 MiB").split()
    units = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    return int(float(value[0]) * units.get(value[1], 2**20)) if len(value) > 1 else 32 * 2**20


def machine(fields: dict[str, str]) -> str:
    """CPU model, core count, L3 and load."""
    model = fields.get("Model name", platform.processor())
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    l3 = l3_bytes(fields) // 2**20
    return f"{model}, {os.cpu_count()} cores, L3 {l3} MiB, ISA {kernels.active_isa()}, load average {load}"


def torchao_8da4w(weight: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """torchao int8-dynamic-activation int4-weight (group 32) linear, or None and the reason it is unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
            from torchao.quantization.granularity import PerGroup
        lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        lin.weight.data = weight
        quantize_(
            lin, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(GROUP))
        )
        return lin, type(lin.weight).__name__
    except Exception as e:  # noqa: BLE001 - report any failure as the reason
        return None, f"{type(e).__name__}: {e}"


def weights_from(nbytes: int, l3: int) -> str:
    """Where repeated calls find the weights: in L3 (hot) when they fit in half of it, DRAM when larger."""
    return "L3 (hot)" if nbytes <= l3 // 2 else ("DRAM" if nbytes > l3 else "L3-sized (mostly DRAM)")


def bench_shape(n: int, k: int, repeats: int, bw: float, l3: int, with_torchao: bool) -> list[str]:
    """Table rows for one N x K weight."""
    rng = np.random.default_rng(n * 7 + k)
    qweight = torch.from_numpy(rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8))
    scales = torch.from_numpy((rng.random((n, (k + GROUP - 1) // GROUP)) * 0.02 + 1e-3).astype(np.float16))
    x = torch.randn(1, k)
    rows = []
    for act_bits in (8, 16):
        for threads in (1, 2):
            layer = kernels.Int4Linear(qweight, scales, None, k, GROUP, act_bits=act_bits, threads=threads)
            call = functools.partial(layer.native.forward, x.numpy(), act_bits, 1.0, None, threads)
            us = median_us(call, repeats)
            gbs = layer.native.packed_bytes / us / 1e3
            where = weights_from(layer.native.packed_bytes, l3)
            rows.append(
                f"| {n}x{k} | spinquant W4A{act_bits} | {threads} | {us:.1f} | {gbs:.1f} | {where} | {gbs / bw:.0%} |"
            )
    weight = torch.randn(n, k) * 0.02
    fp32_bytes = weight.numel() * 4
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            us = median_us(lambda: F.linear(x, weight), repeats)
        rows.append(
            f"| {n}x{k} | torch fp32 F.linear | {threads} | {us:.1f} | {fp32_bytes / us / 1e3:.1f} (fp32) | | |"
        )
    if with_torchao:
        lin, how = torchao_8da4w(weight)
        if lin is None:
            rows.append(f"| {n}x{k} | torchao 8da4w | - | unusable: {how} | | | |")
        else:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                with torch.no_grad():
                    us = median_us(lambda lin=lin: lin(x), max(3, repeats // 10), min_seconds=0.0)
                rows.append(f"| {n}x{k} | torchao 8da4w ({how}) | {threads} | {us:.1f} | | | |")
    return rows


def bench_prefill(n: int, k: int, m: int, repeats: int) -> list[str]:
    """Table rows for an M-token prefill (GEMM) through one N x K weight: spinquant vs torch fp32; the integer paths
    also as a fraction of the int8 dot-product peak measured right before them at the same thread count."""
    rng = np.random.default_rng(n + k)
    qweight = torch.from_numpy(rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8))
    scales = torch.from_numpy((rng.random((n, (k + GROUP - 1) // GROUP)) * 0.02 + 1e-3).astype(np.float16))
    x, weight, rows = torch.randn(m, k), torch.randn(n, k) * 0.02, []
    for threads in (1, 2):
        for act_bits in (8, 16):
            layer = kernels.Int4Linear(qweight, scales, None, k, GROUP, act_bits=act_bits, threads=threads)
            peak = kernels.int8_peak(threads)[0] if act_bits < 16 else 0.0
            us = median_us(functools.partial(layer.native.forward, x.numpy(), act_bits, 1.0, None, threads), repeats)
            macs = m * n * k / us * 1e6
            share = f"{macs / peak:.0%} of {peak / 1e9:.0f}" if peak else ""
            rows.append(
                f"| {n}x{k} | spinquant W4A{act_bits} | {m} | {threads} | {us / 1e3:.2f} | {macs / 1e9:.1f} | {share} |"
            )
        torch.set_num_threads(threads)
        with torch.no_grad():
            us = median_us(lambda: F.linear(x, weight), repeats)
        rows.append(
            f"| {n}x{k} | torch fp32 F.linear | {m} | {threads} | {us / 1e3:.2f} | {m * n * k / us / 1e3:.1f} | |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxK list")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--no-torchao", action="store_true", help="skip torchao's 8da4w (slow reference path on x86)")
    ap.add_argument("--prefill", type=int, default=64, help="tokens of the prefill (GEMM) table; 0 skips it")
    ap.add_argument("--prefill-shapes", default="3072x576,576x1536,4096x4096", help="comma-separated NxK list")
    args = ap.parse_args()
    torch.manual_seed(0)
    bw, fields = read_bandwidth_gbs(), lscpu()
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine(fields)}")
    print(f"single-thread read bandwidth (numpy sum over 512 MB): {bw:.1f} GB/s\n")
    print("| N x K | kernel | threads | median us | GB/s (int4 + fp16 scales) | weights from | of 1-thread BW |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.lower().split("x"))
        for row in bench_shape(n, k, args.repeats, bw, l3_bytes(fields), not args.no_torchao):
            print(row, flush=True)
    if args.prefill > 0:
        print("\n| N x K | kernel | M | threads | median ms | GMAC/s | of int8 peak GMAC/s |")
        print("|---|---|---|---|---|---|---|")
        for shape in args.prefill_shapes.split(","):
            n, k = (int(v) for v in shape.lower().split("x"))
            for row in bench_prefill(n, k, args.prefill, max(5, args.repeats // 5)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
