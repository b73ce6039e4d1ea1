"""llama.cpp as a baseline: its `llama-bench` and `llama-perplexity`, built once by `benchmarks/llama_cpp.sh` from
the llama.cpp vendored in the pinned llama-cpp-python sdist, on the Q4_0 GGUF that script makes from the shipped
Q4_1 GGUF of the default model (llama.cpp repacks Q4_0 at load time for this CPU's SIMD).

The binaries live in `folder()`: $SPINQUANT_LLAMA_CPP, else <spinquant cache>/llama.cpp. Nothing here builds or
downloads: a missing build is a clear error naming the script.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BUILD_SCRIPT = "benchmarks/llama_cpp.sh"
GGUF_STEM = "SmolLM2-135M-Instruct"


class LlamaCppMissing(RuntimeError):
    """The llama.cpp build or its GGUF is not where the bench looks."""


def folder() -> Path:
    """Where benchmarks/llama_cpp.sh puts the binaries and GGUFs."""
    from spinquant.assets import cache_dir

    env = os.environ.get("SPINQUANT_LLAMA_CPP")
    return Path(env) if env else cache_dir() / "llama.cpp"


def _need(path: Path, root: Path) -> Path:
    if not path.exists():
        raise LlamaCppMissing(
            f"{path} is missing: build llama.cpp and the GGUFs once with `bash {BUILD_SCRIPT} {root}` "
            "(~6-10 min of CPU; SPINQUANT_LLAMA_CPP picks another folder)"
        )
    return path


def binary(name: str, root: Path | None = None) -> Path:
    """Path of a llama.cpp tool (llama-bench, llama-perplexity, llama-quantize)."""
    root = root or folder()
    return _need(root / "bin" / name, root)


def gguf(quant: str = "Q4_0", root: Path | None = None) -> Path:
    """The default model's GGUF at `quant` (Q4_0 or Q4_1)."""
    root = root or folder()
    return _need(root / f"{GGUF_STEM}.{quant}.gguf", root)


# Runs the command and samples the high-water mark of its memory (VmHWM) until it exits, then reports it on
# stderr. It runs in a small Python process of its own: a child copies the memory of the process it is forked
# from until it executes the command, and Linux counts that copy into the child's ru_maxrss and, before exec,
# into VmHWM; forked from this (large) process, the child would report this process's peak.
_SAMPLE_PEAK = """import re, subprocess, sys, time
child, peak = subprocess.Popen(sys.argv[1:]), 0
while child.poll() is None:
    try:
        status = open(f"/proc/{child.pid}/status").read()
        peak = max([peak, *map(int, re.findall(r"VmHWM:\\s+(\\d+) kB", status))])
    except OSError:
        pass
    time.sleep(0.005)
sys.stderr.write(f"\\npeak_rss_kib={peak}\\n")
sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)
"""


def run_measured(cmd: list[str]) -> tuple[str, int]:
    """(stdout, peak RSS in bytes) of a child process: its own peak, sampled every 5 ms (_SAMPLE_PEAK)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAMPLE_PEAK, *cmd], stdout=subprocess.PIPE, stderr=err, text=True
        )
        out = proc.stdout.read()
        proc.stdout.close()
        code = proc.wait()
        err.seek(0)
        text, _, peak = err.read().rpartition("\npeak_rss_kib=")
        if code or not peak:
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({code}): {text.strip()[-500:]}")
    return out, int(peak) * 1024


@dataclass
class BenchRun:
    prefill_tok_per_s: float
    decode_ms_per_token: float
    peak_rss_bytes: int


class LlamaBench:
    """One llama-bench setting: prefill `prompt_len` tokens, and decode `new_tokens` after a context of
    `prompt_len` (llama-bench's -d), at `threads` threads, each timed once per call (llama-bench warms up first)."""

    def __init__(self, model: Path, root: Path | None = None):
        self.exe, self.model = binary("llama-bench", root), model

    def _json(self, threads: int, extra: list[str]) -> tuple[dict, int]:
        cmd = [str(self.exe), "-m", str(self.model), "-t", str(threads), "-r", "1", "-o", "json", *extra]
        out, peak = run_measured(cmd)
        rows = json.loads(out)
        if len(rows) != 1:
            raise RuntimeError(f"llama-bench printed {len(rows)} results where one was expected")
        return rows[0], peak

    def run(self, threads: int, prompt_len: int, new_tokens: int) -> BenchRun:
        pp, peak_pp = self._json(threads, ["-p", str(prompt_len), "-n", "0"])
        tg, peak_tg = self._json(threads, ["-p", "0", "-n", str(new_tokens), "-d", str(prompt_len)])
        return BenchRun(
            prefill_tok_per_s=prompt_len / (pp["avg_ns"] * 1e-9),
            decode_ms_per_token=tg["avg_ns"] * 1e-6 / new_tokens,
            peak_rss_bytes=max(peak_pp, peak_tg),
        )


def perplexity(
    text_file: Path, model: Path, ctx: int, chunks: int, threads: int = 0, root: Path | None = None
) -> float:
    """llama-perplexity's final estimate over the first `chunks` windows of `ctx` tokens of a text file (llama.cpp
    scores the second half of each window, as its README says: compare only with the same protocol)."""
    cmd = [str(binary("llama-perplexity", root)), "-m", str(model), "-f", str(text_file), "-c", str(ctx),
           "--chunks", str(chunks), "-b", str(ctx)]  # fmt: skip
    if threads:
        cmd += ["-t", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"llama-perplexity failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    match = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
    if not match:
        raise RuntimeError("llama-perplexity printed no final estimate")
    return float(match.group(1))


def self_peak_rss() -> int:
    """This process's own peak RSS in bytes: VmHWM where /proc has it (ru_maxrss would count the memory of the
    process this one was forked from, see above), else ru_maxrss (bytes on macOS)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
