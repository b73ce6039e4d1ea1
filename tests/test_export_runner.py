"""The C++ runner (export/runner.cpp), built by CMake against the executorch wheel: same greedy ids as the
Python runtime on a tiny exported model; the arm64 build (runner + op library + kernels) under qemu-aarch64."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("executorch")

from native_build import arm64_tools, build_runner, qemu  # noqa: E402
from spinquant.export.cli import prepare_model  # noqa: E402
from spinquant.export.exporter import export_model  # noqa: E402
from spinquant.export.runtime import PteModel  # noqa: E402
from spinquant.model import tiny_model  # noqa: E402
from spinquant.quant.config import QuantConfig  # noqa: E402

PROMPT = [3, 14, 15, 92, 65, 35]
NEW = 8


def _run(cmd: list[str]) -> list[int]:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    match = re.search(r"^ids:((?: \d+)+)$", out, re.M)
    assert match, out
    assert re.search(r"^decode_ms_per_token \d", out, re.M), out
    return [int(t) for t in match.group(1).split()]


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    cfg = QuantConfig(w_bits=4, w_group=32, a_bits=4, kv_bits=4, lm_head_bits=4)
    model = prepare_model(tiny_model(seed=2), cfg, had=True)
    path = tmp_path_factory.mktemp("runner") / "tiny.pte"
    export_model(model, path, had=True, max_seq_len=32, target="arm64")  # the target is metadata only
    return path, list(PteModel(path, check_target=False).generate_ids(PROMPT, NEW))


def _args(path: Path) -> list[str]:
    return [str(path), "--tokens", ",".join(map(str, PROMPT)), "--max-new", str(NEW), "--threads", "2"]


def test_runner_matches_python_runtime(program):
    path, want = program
    runner = build_runner()
    assert _run([str(runner), *_args(path)]) == want
    assert _run([str(runner), *_args(path), "--runs", "3"]) == want  # repeated generations restart at position 0


def test_runner_refuses_a_damaged_program(program, tmp_path):
    """A flipped byte in the weights: the runner checks the program's checksum before ExecuTorch reads it."""
    image = bytearray(program[0].read_bytes())
    image[len(image) // 2] ^= 0x01
    damaged = tmp_path / "damaged.pte"
    damaged.write_bytes(image)
    out = subprocess.run([str(build_runner()), *_args(damaged)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and "is damaged: its contents do not match its recorded checksum" in out.stderr


def test_runner_reports_a_bad_path(program, tmp_path):
    runner = build_runner()
    res = subprocess.run([str(runner), str(tmp_path / "none.pte"), "--tokens", "1"], capture_output=True, text=True)
    assert res.returncode == 1 and "none.pte cannot be read (missing, empty or not a file)" in res.stderr


@arm64_tools
@pytest.mark.parametrize("cpu", ["max", "cortex-a72"])  # dotprod + i8mm, and the plain NEON fallback
def test_arm64_runner_under_qemu(program, cpu):
    path, want = program
    runner = build_runner(arm64=True)
    assert _run([*qemu(cpu), str(runner), *_args(path)]) == want
