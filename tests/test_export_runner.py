"""The C++ runner (export/runner.cpp), built by CMake against the executorch wheel: same greedy ids as the
Python runtime on a tiny exported model; the arm64 build (runner + op library + kernels) under qemu-aarch64."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("executorch")

from spinquant.export.cli import prepare_model  # noqa: E402
from spinquant.export.exporter import export_model  # noqa: E402
from spinquant.export.runtime import PteModel  # noqa: E402
from spinquant.model import tiny_model  # noqa: E402
from spinquant.quant.config import QuantConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [3, 14, 15, 92, 65, 35]
NEW = 8
# An unpacked aarch64 executorch 1.5.1 wheel (folder holding executorch/lib/libexecutorch.so); run.sh makes it.
ARM_ET = Path(os.environ.get("SPINQUANT_ET_AARCH64_DIR", ROOT / "build" / "executorch-aarch64")) / "executorch"


def _build(build_dir: Path, *cmake_args: str) -> Path:
    """Configure and build spinquant_runner (incremental when the folder exists); returns the binary."""
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("cmake and ninja are needed to build the runner")
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
         "-DSPINQUANT_BUILD_TESTS=OFF", "-DSPINQUANT_BUILD_EXECUTORCH_OPS=ON", f"-DPython_EXECUTABLE={sys.executable}",
         *cmake_args],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["cmake", "--build", str(build_dir), "-j2", "--target", "spinquant_runner"], check=True,
                   capture_output=True)  # fmt: skip
    return build_dir / "export" / "spinquant_runner"


def _run(cmd: list[str]) -> list[int]:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    match = re.search(r"^ids:((?: \d+)+)$", out, re.M)
    assert match, out
    assert re.search(r"^decode_ms_per_token \d", out, re.M), out
    return [int(t) for t in match.group(1).split()]


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    cfg = QuantConfig(w_bits=4, w_group=32, a_bits=4, kv_bits=4, quantize_lm_head=True)
    model = prepare_model(tiny_model(seed=2), cfg, had=True)
    path = tmp_path_factory.mktemp("runner") / "tiny.pte"
    export_model(model, path, had=True, max_seq_len=32, target="arm64")  # the target is metadata only
    return path, list(PteModel(path, check_target=False).generate_ids(PROMPT, NEW))


def _args(path: Path) -> list[str]:
    return [str(path), "--tokens", ",".join(map(str, PROMPT)), "--max-new", str(NEW), "--threads", "2"]


def test_runner_matches_python_runtime(program):
    path, want = program
    runner = _build(ROOT / "build" / "pytest-et-x86_64")
    assert _run([str(runner), *_args(path)]) == want
    assert _run([str(runner), *_args(path), "--runs", "3"]) == want  # repeated generations restart at position 0


def test_runner_reports_a_bad_path(program, tmp_path):
    runner = _build(ROOT / "build" / "pytest-et-x86_64")
    res = subprocess.run([str(runner), str(tmp_path / "none.pte"), "--tokens", "1"], capture_output=True, text=True)
    assert res.returncode == 1 and "cannot load method 'forward'" in res.stderr


@pytest.mark.skipif(
    not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64") and ARM_ET.is_dir()),
    reason="needs g++-aarch64-linux-gnu, qemu-user and an unpacked aarch64 executorch wheel (see run.sh)",
)
@pytest.mark.parametrize("cpu", ["max", "cortex-a72"])  # dotprod + i8mm, and the plain NEON fallback
def test_arm64_runner_under_qemu(program, cpu):
    path, want = program
    runner = _build(
        ROOT / "build" / "pytest-et-arm64",
        f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'kernels' / 'cmake' / 'aarch64-linux-gnu.cmake'}",
        f"-DSPINQUANT_EXECUTORCH_DIR={ARM_ET}",
    )
    qemu = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-cpu", cpu]
    assert _run([*qemu, str(runner), *_args(path)]) == want
