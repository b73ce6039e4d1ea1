"""`spinquant bench`: decode ms/token and prefill tokens/s of fp32 eager, ExecuTorch XNNPACK 8da4w and our
programs (W4A8 no_had, W4A8 had, W4A4KV4 had; W4A8 no_had with the 8-bit embedding and lm_head of the device
recipe), built from the same model, timed on the same prompt in one run; with `llama_cpp`, llama.cpp's llama-bench
on the Q4_0 GGUF of the same model too (llama_cpp.py), and the peak RSS of each program while it decodes.

Two XNNPACK programs: `xnnpack_8da4w` is the standard ExecuTorch path (baseline.py: the llama recipe's ops and
SDPA-with-KV-cache custom ops, 8da4w linears on XNNPACK); `xnnpack_8da4w_fused` puts the same XNNPACK linears
into our graph (our fused norm / RoPE / attention ops), so that only the int4 linears differ from ours.

Every setting runs `runs` times (prefill the prompt, then greedy-decode `new_tokens`), in rounds that visit
every (variant, threads) setting once, so that load from other work drifting during the run hits every
setting alike; medians are reported in a markdown table, a JSON file and a bar chart. Each round also measures
the CPU's int8 dot-product peak (`kernels.int8_peak`) at every thread count, so that prefill is reported as a
fraction of the compute peak, as decode is of the bandwidth floor. A warning is printed
(and recorded) when the machine is already loaded, because other work on these cores halves the speed.
"""

from __future__ import annotations

import gc
import json
import math
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

VARIANTS = (
    "fp32_eager",
    "xnnpack_8da4w",
    "xnnpack_8da4w_fused",
    "w4a8_no_had",
    "w4a8_had",
    "w4a4kv4_had",
    "w4a8_no_had_ends8",
)
ENDS8 = "_ends8"  # variant suffix: embedding and lm_head in 8 bits (one shared table for a tied model)
LLAMA_CPP = "llama_cpp_q4_0"  # pseudo-variant: llama.cpp's llama-bench on the Q4_0 GGUF (opt-in)
PROMPT = (
    "The history of the city begins with a small settlement on the river, where traders met to exchange salt, "
    "grain and wool. Over the following centuries it grew into a market town with a cathedral and a university."
)
FLOOR = "read_floor"  # pseudo-variant: one read of w4a8_no_had's weight bytes a token (the bandwidth floor)
LOAD_LIMIT = 0.5
PPL_VARIANT = "w4a8_no_had"  # its weight bytes set the floor
PPL_VARIANTS = (PPL_VARIANT, "w4a8_no_had_ends8")  # programs whose perplexity is compared with their eager model


@dataclass
class Result:
    variant: str
    threads: int
    decode_ms_per_token: float
    prefill_tok_per_s: float
    decode_runs: list[float]
    load_before: float
    decode_cpu_ms_per_token: float = 0.0  # process CPU time (all threads, spinning included), median
    prefill_runs: list[float] = field(default_factory=list)  # tok/s, one a round


@dataclass
class Peak:
    """The int8 dot-product peak at one thread count: median over rounds, MAC/s."""

    threads: int
    macs_per_s: float
    instruction: str
    runs: list[float]


def prefill_macs(args, prompt_len: int) -> int:
    """Multiply-accumulates of the linears in one prefill of prompt_len tokens: every layer's projections for every
    token and the lm_head for the last one only (attention, norms and the activation quantizer not counted)."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    per_token = args.n_layers * (args.dim * (q + 2 * kv) + q * args.dim + 3 * args.dim * args.hidden_dim)
    return prompt_len * per_token + args.vocab_size * args.dim


def machine_load() -> float:
    """1-minute load average."""
    return os.getloadavg()[0]


def warn_if_loaded(limit: float = LOAD_LIMIT) -> float:
    """Print a warning if the machine is busy (timings would be unreliable); return the load."""
    load = machine_load()
    if load > limit:
        print(
            f"WARNING: load average {load:.2f} > {limit} on {os.cpu_count()} cores: other work is running, "
            "timings will be slow and noisy"
        )
    return load


def prompt_ids(tokenizer, n: int) -> list[int]:
    """The first n tokens of PROMPT, or of the wiki test text when n is longer (long-context runs)."""
    from spinquant.data import test_windows

    ids = tokenizer.encode(PROMPT)
    return ids[:n] if n <= len(ids) else test_windows(tokenizer, n, 1)[0].tolist()


# ---- runners: (prefill(ids) -> seconds, decode_step(token, pos) -> next token) -------------------------


class EagerRunner:
    """The fp32 model in PyTorch eager mode with a float KV cache (ExportableDecoder run eagerly)."""

    def __init__(self, model, max_seq_len: int):
        from .exportable import ExportableDecoder

        self.decoder = ExportableDecoder(model, max_seq_len).eval()

    def set_threads(self, n: int) -> None:
        torch.set_num_threads(n)

    @torch.no_grad()
    def forward(self, ids: list[int], start: int) -> int:
        pos = torch.arange(start, start + len(ids))
        return int(self.decoder(torch.tensor([ids]), pos, torch.tensor([len(ids) - 1]))[0, -1].argmax())


# ExecuTorch's thread pool (XNNPACK's) can only be resized by replacing it, and an XNNPACK program keeps the pool
# it was loaded with: running it after a resize crashes the process. So the pool is resized only for delegated
# programs, and each of those is loaded again after any resize.
_et_pool = {"threads": 0, "resizes": 0}


def _resize_executorch_pool(threads: int) -> None:
    from executorch.extension.pybindings import portable_lib

    if _et_pool["threads"] != threads:
        portable_lib._unsafe_reset_threadpool(threads)
        _et_pool.update(threads=threads, resizes=_et_pool["resizes"] + 1)


class PteRunner:
    """A .pte through the ExecuTorch runtime; `delegated` programs (XNNPACK) run on ExecuTorch's thread pool,
    ours on the spinquant kernels' pool, each sized to the setting's thread count."""

    def __init__(self, path: Path, delegated: bool = False):
        self.path, self.delegated = path, delegated
        self._load()

    def _load(self) -> None:
        from .runtime import PteModel

        self.model = None  # free the old program (not close(): that would drop our other programs' prepacking)
        self.model = PteModel(self.path)
        self.resizes = _et_pool["resizes"]

    def set_threads(self, n: int) -> None:
        from .runtime import set_threads

        set_threads(n)
        if self.delegated:
            _resize_executorch_pool(n)
            if self.resizes != _et_pool["resizes"]:
                self._load()
                self.forward([0], 0)  # XNNPACK's first call sets up its workspace: not part of a timed prefill
        # torch does not run in the decode loop; one intra-op thread (the eager runner leaves 2) keeps any torch
        # call between runs off the second core.
        torch.set_num_threads(1)

    def forward(self, ids: list[int], start: int) -> int:
        return self.model.step(ids, start)

    def close(self) -> None:
        self.model.close()


class FloorRunner:
    """Reads as many bytes as a decode step streams, once per "token", on the kernels' thread pool: the time no
    weight-streaming program can beat on this machine, measured in the same rounds as the programs. Reads with
    whichever software-prefetch distance (none or 16 KiB) reads faster here at this thread count."""

    PREFETCH_CHOICES = (0, 16384)

    def __init__(self, nbytes: int):
        import numpy as np

        self.buffer = np.ones(nbytes, np.uint8)  # touched: its pages exist before the first timed read
        self.threads = 1
        self.prefetch: dict[int, int] = {}  # threads -> the faster prefetch distance, chosen once

    def set_threads(self, n: int) -> None:
        self.threads = n
        torch.set_num_threads(1)
        if n not in self.prefetch:
            self.prefetch[n] = self._faster_prefetch(n)

    def _faster_prefetch(self, threads: int, reads: int = 9) -> int:
        """The prefetch distance with the lower median time of `reads` alternating reads of the buffer."""
        from spinquant.kernels import read_bytes

        times: dict[int, list[float]] = {p: [] for p in self.PREFETCH_CHOICES}
        for _ in range(reads):
            for p in self.PREFETCH_CHOICES:
                t0 = time.perf_counter()
                read_bytes(self.buffer, threads, p)
                times[p].append(time.perf_counter() - t0)
        return min(self.PREFETCH_CHOICES, key=lambda p: statistics.median(times[p]))

    def forward(self, ids: list[int], start: int) -> int:
        from spinquant.kernels import read_bytes

        read_bytes(self.buffer, self.threads, self.prefetch[self.threads])
        return 0


class LlamaCppRunner:
    """llama.cpp's llama-bench in a child process, one prefill and one decode timing a run (llama_cpp.LlamaBench);
    its decode CPU time is not measured (nan). Keeps the largest peak RSS its runs had."""

    def __init__(self):
        from . import llama_cpp

        self.bench = llama_cpp.LlamaBench(llama_cpp.gguf("Q4_0"))
        self.threads, self.peak_rss = 1, 0

    def set_threads(self, n: int) -> None:
        self.threads = n

    def timed_run(self, prompt_len: int, new_tokens: int) -> tuple[float, float, float]:
        run = self.bench.run(self.threads, prompt_len, new_tokens)
        self.peak_rss = max(self.peak_rss, run.peak_rss_bytes)
        return run.prefill_tok_per_s, run.decode_ms_per_token, math.nan


def time_run(runner, ids: list[int], new_tokens: int) -> tuple[float, float, float]:
    """(prefill tokens/s, decode ms/token, decode CPU ms/token) of one prefill + greedy decode. The process CPU
    time stays meaningful when other work shares the cores (wall time then includes waiting for a core).
    Python's garbage collector is paused meanwhile, as timeit does: a full collection of the benchmark process's
    ~400k objects takes ~0.2 s and would otherwise land in whichever run crosses its allocation threshold."""
    if isinstance(runner, LlamaCppRunner):  # llama-bench times itself, on a prompt of the same length
        return runner.timed_run(len(ids), new_tokens)
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        token = runner.forward(ids, 0)
        prefill = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(new_tokens):
            token = runner.forward([token], len(ids) + i)
        decode, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        if enabled:
            gc.enable()
    return len(ids) / prefill, 1000.0 * decode / new_tokens, 1000.0 * cpu / new_tokens


# ---- building the variants from one model --------------------------------------------------------------


def _stale_removed(path: Path) -> Path:
    """path, deleted first if an older spinquant wrote it (its program is exported again)."""
    from .runtime import is_current

    if path.exists() and not is_current(path):
        path.unlink()
    return path


def export_xnnpack(name: str, model_path: str | None, out: Path, max_seq_len: int) -> Path:
    """out/<name>.pte of an XNNPACK variant, exported unless a current one is there."""
    from spinquant.model import load_model

    from . import baseline
    from .exportable import ExportableDecoder
    from .exporter import build_metadata, host_target

    path = _stale_removed(out / f"{name}.pte")
    if not path.exists():
        model, tokenizer = load_model(model_path)
        meta = build_metadata(model, host_target(), False, {"name": "8da4w"}, tokenizer, max_seq_len)
        graph = ExportableDecoder if name.endswith("fused") else baseline.StandardDecoder
        baseline.export_xnnpack_8da4w(graph(model, max_seq_len), path, meta)
    return path


def _lowest_priority() -> None:
    """Run this process on idle cycles only. A busy process at normal priority beside a two-thread torch job on
    two cores slowed that job 2.3x (every parallel region waits for its descheduled thread); at SCHED_IDLE it
    did not measurably. nice 19 is the fallback where SCHED_IDLE does not exist."""
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:  # macOS has no SCHED_IDLE
        os.nice(19)


def _export_on_one_thread(name: str, model_path: str | None, out: Path, max_seq_len: int) -> None:
    _lowest_priority()
    torch.set_num_threads(1)
    export_xnnpack(name, model_path, out, max_seq_len)


def start_xnnpack_exports(
    model_path: str | None, out: Path, variants: list[str], max_seq_len: int = 256
) -> list[mp.process.BaseProcess]:
    """Export the XNNPACK variants in child processes on one thread each at the lowest priority: their export is
    minutes of single-threaded graph tracing that takes only cycles other work leaves idle, so it never slows
    that work (beside the main job it gets few: torch's threads spin between ops; most of it runs once the
    parent waits for it). run_bench reuses their .pte files; join the processes first (a failed one leaves no
    file, and run_bench exports it again)."""
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_export_on_one_thread, args=(name, model_path, out, max_seq_len), daemon=True)
        for name in variants
        if name.startswith("xnnpack")
    ]
    if procs:
        out.mkdir(parents=True, exist_ok=True)
    for p in procs:
        p.start()
    return procs


def build_variant(name: str, model_path: str | None, out: Path, max_seq_len: int, seed: int) -> tuple:
    """(runner, export seconds, model bytes streamed a token or None) of one variant; .pte files are reused."""
    from spinquant.model import load_model

    from . import baseline
    from .cli import mode_config, prepare_model
    from .exporter import export_model

    start = time.perf_counter()
    if name.startswith("xnnpack"):
        path = export_xnnpack(name, model_path, out, max_seq_len)
        baseline.load_llama_ops()  # the runtime kernels of llama::update_cache / custom_sdpa
        return PteRunner(path, delegated=True), time.perf_counter() - start, None
    model, tokenizer = load_model(model_path)
    if name == "fp32_eager":
        return EagerRunner(model, max_seq_len), 0.0, None
    path = _stale_removed(out / f"{name}.pte")
    mode, had = name.removesuffix(ENDS8).split("_", 1)
    cfg = mode_config(mode.upper(), *((8, 8) if name.endswith(ENDS8) else ()))
    runner_model = None
    if not path.exists() or name in PPL_VARIANTS:
        runner_model = prepare_model(model, cfg, had == "had", seed=seed)
    if not path.exists():
        export_model(model, path, had=had == "had", tokenizer=tokenizer, max_seq_len=max_seq_len)
    runner = PteRunner(path)
    runner.eager = runner_model
    return runner, time.perf_counter() - start, streamed_bytes(model, cfg.w_group, name.endswith(ENDS8))


def _decode_peak_rss(path: str, delegated: bool, ids: list[int], new_tokens: int, threads: int) -> tuple[int, int]:
    """In a fresh process: (RSS high-water mark before loading the program, after prefill + decode), bytes."""
    from . import baseline
    from .llama_cpp import self_peak_rss
    from .runtime import PteModel, load_library, set_threads

    load_library()  # the ExecuTorch runtime with it: the process's baseline, as for XNNPACK below
    if delegated:
        baseline.load_llama_ops()
        _resize_executorch_pool(threads)
    before = self_peak_rss()
    model = PteModel(Path(path))
    set_threads(threads)
    list(model.generate_ids(ids, new_tokens))
    return before, self_peak_rss()


def decode_peak_rss(runner: PteRunner, ids: list[int], new_tokens: int, threads: int = 1) -> int:
    """Peak RSS a program adds while it prefills and decodes: measured in a fresh process, minus that process's
    peak before loading it (the Python interpreter with torch and executorch imported)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        before, after = pool.submit(
            _decode_peak_rss, str(runner.path), runner.delegated, ids, new_tokens, threads
        ).result()
    return after - before


def perplexity_pair(eager, pte, tokens: torch.Tensor) -> tuple[float, float]:
    """(eager, .pte) perplexity of one window of tokens (next-token cross-entropy)."""
    with torch.no_grad():
        ref = F.cross_entropy(eager(tokens[None])[0, :-1], tokens[1:])
    got = F.cross_entropy(pte.logits(tokens)[:-1], tokens[1:])
    return math.exp(ref), math.exp(got)


def streamed_bytes(model, group: int, ends8: bool = False) -> int:
    """Bytes of weights one decode step reads when every linear is int4 with fp16 scales: packed codes,
    scales, and one embedding row; with `ends8`, lm_head as int8 codes, fp32 scales and int32 row sums, one
    int8 embedding row, and (a tied model) the fp32 [dim, dim] matrix `pre`."""
    dim = model.args.dim
    total = dim + 4 if ends8 else dim * 4
    for name, lin in model.linears():
        n, k = lin.weight.shape
        if ends8 and name == "lm_head":
            total += n * k + n * 8 + (k * k * 4 if model.args.tie_word_embeddings else 0)
        else:
            total += n * ((k + 1) // 2) + n * -(-k // group) * 2
    return total


# ---- the run -------------------------------------------------------------------------------------------


def measure(
    runners: dict, ids: list[int], threads: list[int], new_tokens: int, runs: int
) -> tuple[list[Result], list[Peak]]:
    """Time every (variant, threads) setting `runs` times in interleaved rounds; medians per setting, and the int8
    peak at each thread count, sampled once a round. Odd rounds visit the settings in reverse, so that no variant
    always runs right after the same neighbour (a program's speed here depends by a few percent on what ran just
    before it)."""
    from spinquant.kernels import int8_peak

    settings = [(name, t) for name in runners for t in threads]
    for name, t in settings:  # warm-up: prepacking, caches, thread pools
        runners[name].set_threads(t)
        time_run(runners[name], ids, 4)
    samples: dict = {key: [] for key in settings}
    loads: dict = {key: [] for key in settings}
    if runs < 1:
        raise ValueError("runs must be at least 1")
    peaks: dict = {t: [] for t in threads}
    instruction = ""
    for round_ in range(runs):
        load = warn_if_loaded()
        for t in threads:
            rate, instruction = int8_peak(t)
            peaks[t].append(rate)
        for name, t in settings if round_ % 2 == 0 else settings[::-1]:
            runners[name].set_threads(t)
            samples[name, t].append(time_run(runners[name], ids, new_tokens))
            loads[name, t].append(load)
    results = []
    for name, t in settings:
        prefill, decode, cpu = zip(*samples[name, t], strict=True)
        med = statistics.median
        results.append(
            Result(name, t, med(decode), med(prefill), list(decode), med(loads[name, t]), med(cpu), list(prefill))
        )
    return results, [Peak(t, statistics.median(peaks[t]), instruction, peaks[t]) for t in threads]


# (numerator, denominator) of the paired ratios: speed-ups of ours over the baselines, what R3 + R4 cost, what
# 4-bit activations and KV cache cost, and how far the program is from the bandwidth floor.
RATIOS = (
    ("xnnpack_8da4w", "w4a8_no_had"),
    ("xnnpack_8da4w_fused", "w4a8_no_had"),
    ("fp32_eager", "w4a8_no_had"),
    ("w4a8_had", "w4a8_no_had"),
    ("w4a4kv4_had", "w4a8_had"),
    ("w4a8_no_had", FLOOR),
    (LLAMA_CPP, "w4a8_no_had"),
    ("xnnpack_8da4w", "w4a8_no_had_ends8"),
    (LLAMA_CPP, "w4a8_no_had_ends8"),
    ("w4a8_no_had_ends8", "w4a8_no_had"),
)


def _paired(results: list[Result], field: str, invert: bool) -> list[tuple[str, str, int, float]]:
    runs = {(r.variant, r.threads): getattr(r, field) for r in results}
    out = []
    for num, den in RATIOS:
        for t in sorted({r.threads for r in results}):
            a_runs, b_runs = runs.get((num, t)), runs.get((den, t))
            if a_runs and b_runs:
                ratios = [(b / a if invert else a / b) for a, b in zip(a_runs, b_runs, strict=True)]
                out.append((num, den, t, statistics.median(ratios)))
    return out


def paired_ratios(results: list[Result]) -> list[tuple[str, str, int, float]]:
    """(numerator, denominator, threads, median over rounds of the ratio of their decode times). Both settings of
    a pair run in the same round, seconds apart, so slow phases of a shared machine cancel out."""
    return _paired(results, "decode_runs", invert=False)


def prefill_ratios(results: list[Result]) -> list[tuple[str, str, int, float]]:
    """(numerator, denominator, threads, median over rounds of denominator / numerator prefill tok/s): the speed-up
    of the denominator's prefill, paired by round as paired_ratios does for decode."""
    return [r for r in _paired(results, "prefill_runs", invert=True) if r[1] != FLOOR]


def peak_lines(results: list[Result], peaks: list[Peak], macs: int, prompt_len: int) -> list[str]:
    """Markdown: the int8 peak per thread count and the prefill MAC/s of our programs (macs a prompt of prompt_len
    tokens) as a fraction of it."""
    lines = [
        "",
        f"int8 dot-product peak ({peaks[0].instruction}, median of rounds) and prefill linear MAC/s "
        f"({macs / 1e9:.2f} GMAC a prompt) as a fraction of it:",
        "",
        "| variant | threads | prefill GMAC/s | int8 peak GMAC/s | fraction of peak |",
        "|---|---:|---:|---:|---:|",
    ]
    peak = {p.threads: p.macs_per_s for p in peaks}
    for r in results:
        if r.variant.startswith("w4a") and r.threads in peak:
            rate = macs * r.prefill_tok_per_s / prompt_len  # a prompt's MACs times prompts a second
            lines.append(
                f"| {r.variant} | {r.threads} | {rate / 1e9:.1f} | {peak[r.threads] / 1e9:.1f} | "
                f"{rate / peak[r.threads]:.0%} |"
            )
    return lines


def markdown(results: list[Result], peaks: list[Peak] | None = None, macs: int = 0, prompt_len: int = 0) -> str:
    lines = [
        "| variant | threads | decode ms/token (median) | prefill tok/s (median) | load before | decode CPU ms/token |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.variant} | {r.threads} | {r.decode_ms_per_token:.2f} | {r.prefill_tok_per_s:.0f} | "
            f"{r.load_before:.2f} | {r.decode_cpu_ms_per_token:.2f} |"
        )
    ratios = paired_ratios(results)
    if ratios:
        lines += ["", "| decode time ratio (median of per-round ratios) | threads | ratio |", "|---|---:|---:|"]
        lines += [f"| {num} / {den} | {t} | {ratio:.3f} |" for num, den, t, ratio in ratios]
    ratios = prefill_ratios(results)
    if ratios:
        lines += ["", "| prefill speed-up (median of per-round tok/s ratios) | threads | ratio |", "|---|---:|---:|"]
        lines += [f"| {den} over {num} | {t} | {ratio:.3f} |" for num, den, t, ratio in ratios]
    if peaks and macs and prompt_len:
        lines += peak_lines(results, peaks, macs, prompt_len)
    floor = [r for r in results if r.variant == FLOOR]
    if floor:
        times = ", ".join(f"{r.threads} thread(s) {r.decode_ms_per_token:.2f} ms" for r in floor)
        lines.append(f"\n{FLOOR}: one read of w4a8_no_had's weight bytes on the kernels' thread pool ({times})")
    return "\n".join(lines) + "\n"


def plot(results: list[Result], path: Path, title: str) -> None:
    """Grouped bar chart of decode ms/token (one bar per thread count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r.variant for r in results))
    threads = sorted({r.threads for r in results})
    width = 0.8 / len(threads)
    fig, ax = plt.subplots(figsize=(8, 4))
    for j, t in enumerate(threads):
        vals = [
            next((r.decode_ms_per_token for r in results if r.variant == v and r.threads == t), 0) for v in variants
        ]
        bars = ax.bar([i + j * width for i in range(len(variants))], vals, width, label=f"{t} thread(s)")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([i + width * (len(threads) - 1) / 2 for i in range(len(variants))], variants, fontsize=8)
    ax.set_ylabel("decode ms/token (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def memory_table(runners: dict, ids: list[int], new_tokens: int) -> str:
    """Markdown: file size and peak RSS while decoding of each program and of llama.cpp."""
    lines = ["", "| program | file MB | peak RSS MB while decoding |", "|---|---:|---:|"]
    for name, runner in runners.items():
        if isinstance(runner, PteRunner):
            rss = decode_peak_rss(runner, ids, new_tokens)
            lines.append(f"| {name} | {runner.path.stat().st_size / 1e6:.1f} | {rss / 1e6:.1f} |")
        elif isinstance(runner, LlamaCppRunner):
            size = runner.bench.model.stat().st_size / 1e6
            lines.append(f"| {name} | {size:.1f} | {runner.peak_rss / 1e6:.1f} |")
    note = (
        "\nPeak RSS: ours and XNNPACK's, what a fresh process's high-water mark grew by from loading the program "
        "to the end of one prefill + decode at 1 thread (the interpreter's own memory left out); "
        "llama.cpp's, the whole llama-bench process's peak over its runs.\n"
    )
    return "\n".join(lines) + "\n" + note


def run_bench(
    model_path: str | None,
    out: Path,
    variants: list[str],
    threads: list[int],
    prompt_len: int = 16,
    new_tokens: int = 32,
    runs: int = 5,
    max_seq_len: int = 256,
    seed: int = 0,
    ppl_tokens: int = 256,
    log: Callable[[str], None] = print,
    name: str = "decode",
    llama_cpp: bool = False,
    memory: bool = False,
) -> list[Result]:
    """Build every variant, time it at each thread count, write `name`.md (table), `name`.json and `name`.png
    (chart) to `out`. `llama_cpp` adds llama.cpp's llama-bench on the Q4_0 GGUF (built by
    benchmarks/llama_cpp.sh) to every round; `memory` measures each program's file size and peak RSS while
    decoding (one thread, fresh processes)."""
    from transformers import AutoTokenizer

    from spinquant import assets
    from spinquant.data import test_windows
    from spinquant.model import read_args

    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    if prompt_len + new_tokens + 4 > max_seq_len:
        raise ValueError("prompt_len + new_tokens exceed max_seq_len")
    llama = LlamaCppRunner() if llama_cpp else None  # a missing build fails here, before the long work
    out.mkdir(parents=True, exist_ok=True)
    folder = model_path or str(assets.default_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = prompt_ids(tokenizer, prompt_len)
    runners, ppl, floor_bytes, weight_bytes = {}, {}, None, {}
    for variant in variants:
        runner, seconds, nbytes = build_variant(variant, model_path, out, max_seq_len, seed)
        log(f"{variant}: ready in {seconds:.0f} s")
        if nbytes is not None:
            weight_bytes[variant] = nbytes
        if variant == PPL_VARIANT:
            floor_bytes = nbytes
        if variant in PPL_VARIANTS:
            window = test_windows(tokenizer, min(ppl_tokens, max_seq_len), 1)[0]
            eager, pte = ppl[variant] = perplexity_pair(runner.eager, runner.model, window)
            runner.eager = None
            log(f"{variant}: perplexity on {len(window)} wiki tokens: eager {eager:.4f}, .pte {pte:.4f}")
        runners[variant] = runner
    if llama is not None:
        runners[LLAMA_CPP] = llama
    if floor_bytes is not None:
        runners[FLOOR] = FloorRunner(floor_bytes)
    results, peaks = measure(runners, ids, threads, new_tokens, runs)
    macs = prefill_macs(read_args(folder), len(ids))
    for r in results:
        log(
            f"  {r.variant}, {r.threads} thread(s): decode {r.decode_ms_per_token:.2f} ms/token, "
            f"prefill {r.prefill_tok_per_s:.0f} tok/s"
        )
    sizes = memory_table(runners, ids, new_tokens) if memory else ""
    for runner in runners.values():
        if isinstance(runner, PteRunner):
            runner.close()
    setting = f"{Path(folder).name} decode on this CPU: {prompt_len}-token prompt, {new_tokens} new tokens"
    table = f"{setting}, median of {runs} runs a setting\n\n" + markdown(results, peaks, macs, len(ids))
    if FLOOR in runners:
        chosen = ", ".join(f"{t} thread(s) {p} B" for t, p in sorted(runners[FLOOR].prefetch.items()))
        table += f"{FLOOR} software prefetch distance, the faster of none and 16 KiB here: {chosen}\n"
    if weight_bytes:
        table += "Weight bytes a decode step streams: " + ", ".join(
            f"{n} {b / 1e6:.1f} MB" for n, b in weight_bytes.items()
        )
        table += "\n"
    for variant, (eager, pte) in ppl.items():
        n = min(ppl_tokens, max_seq_len)
        table += f"\nPerplexity of {variant} on {n} wiki test tokens: eager {eager:.4f}, .pte {pte:.4f}\n"
    if llama is not None:
        table += (
            f"\n{LLAMA_CPP}: llama.cpp's llama-bench on {llama.bench.model.name} (-p {prompt_len} -n 0, and -p 0 "
            f"-n {new_tokens} -d {prompt_len}; its own prompt tokens), run in the same rounds\n"
        )
    table += sizes
    (out / f"{name}.md").write_text(table)
    keys = ("numerator", "denominator", "threads", "ratio")
    ratios = [dict(zip(keys, r, strict=True)) for r in paired_ratios(results)]
    prefill = [dict(zip(keys, r, strict=True)) for r in prefill_ratios(results)]
    summary = {
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "results": [asdict(r) for r in results],
        "ratios": ratios,
        "prefill_ratios": prefill,
        "int8_peak": [asdict(p) for p in peaks],
        "prefill_macs": macs,
    }
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    plot(results, out / f"{name}.png", setting)
    log(table)
    return results
