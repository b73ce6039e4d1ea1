"""The llama.cpp baseline's driver (export/llama_cpp.py) against stand-in binaries: how it calls llama-bench and
reads its JSON, the child's own peak RSS, llama-perplexity's estimate, and the error when nothing is built."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from spinquant.export import llama_cpp

FAKE_BENCH = """#!/usr/bin/env python3
import sys
import time
a = sys.argv
p, n = int(a[a.index("-p") + 1]), int(a[a.index("-n") + 1])
d = int(a[a.index("-d") + 1]) if "-d" in a else 0
block = bytearray(30 << 20)  # a peak RSS the parent must see as the child's
time.sleep(0.2)
ns = 2_000_000 * p if p else 3_000_000 * n * (1 + d // 512)
print('[{"n_prompt": %d, "n_gen": %d, "n_depth": %d, "avg_ns": %d}]' % (p, n, d, ns))
"""

FAKE_PPL = """#!/bin/sh
echo "Final estimate: PPL = 12.3456 +/- 0.25000" >&2
"""


def _tool(root: Path, name: str, text: str) -> None:
    path = root / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_bench_reads_prefill_decode_and_the_childs_peak_rss(tmp_path):
    _tool(tmp_path, "llama-bench", FAKE_BENCH)
    model = tmp_path / f"{llama_cpp.GGUF_STEM}.Q4_0.gguf"
    model.write_bytes(b"gguf")
    run = llama_cpp.LlamaBench(llama_cpp.gguf("Q4_0", tmp_path), tmp_path).run(threads=2, prompt_len=512, new_tokens=32)
    assert run.prefill_tok_per_s == pytest.approx(512 / (2e-3 * 512))
    assert run.decode_ms_per_token == pytest.approx(3.0 * 2)  # at depth 512
    assert 30e6 < run.peak_rss_bytes < 300e6


def test_perplexity_reads_the_final_estimate(tmp_path):
    _tool(tmp_path, "llama-perplexity", FAKE_PPL)
    assert llama_cpp.perplexity(tmp_path / "t.txt", tmp_path / "m.gguf", 512, 8, root=tmp_path) == 12.3456


def test_missing_build_names_the_script(tmp_path, monkeypatch):
    monkeypatch.setenv("SPINQUANT_LLAMA_CPP", str(tmp_path / "none"))
    with pytest.raises(llama_cpp.LlamaCppMissing, match=r"bash benchmarks/llama_cpp.sh .*none"):
        llama_cpp.binary("llama-bench")


def _grow_by(n_bytes: int) -> tuple[int, int]:
    before = llama_cpp.self_peak_rss()
    block = bytearray(n_bytes)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    return before, llama_cpp.self_peak_rss()


def test_self_peak_rss_of_a_spawned_child_is_its_own():
    """A child spawned from a large process reports what it grew by (ru_maxrss would report the parent's peak)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ballast = bytearray(1 << 30)  # this process's peak: above the child's, so ru_maxrss would hide its growth
    ballast[::4096] = b"x" * len(ballast[::4096])
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        before, after = pool.submit(_grow_by, 100 << 20).result()
    assert 90e6 < after - before < 200e6
