"""Builds the C++ runner (export/runner.cpp) for the tests: for this machine, and for arm64 to run under qemu."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# An unpacked aarch64 executorch 1.5.1 wheel (folder holding executorch/lib/libexecutorch.so); run.sh makes it.
ARM_ET = Path(os.environ.get("SPINQUANT_ET_AARCH64_DIR", ROOT / "build" / "executorch-aarch64")) / "executorch"
arm64_tools = pytest.mark.skipif(
    not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64") and ARM_ET.is_dir()),
    reason="needs g++-aarch64-linux-gnu, qemu-user and an unpacked aarch64 executorch wheel (see run.sh)",
)


def qemu(cpu: str) -> list[str]:
    """The command prefix that runs an arm64 binary here on the emulated `cpu`."""
    return ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-cpu", cpu]


def build_runner(arm64: bool = False) -> Path:
    """Configure and build spinquant_runner (incremental when its folder exists); returns the binary."""
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("cmake and ninja are needed to build the runner")
    build_dir = ROOT / "build" / ("pytest-et-arm64" if arm64 else "pytest-et-x86_64")
    cross = [
        f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'kernels' / 'cmake' / 'aarch64-linux-gnu.cmake'}",
        f"-DSPINQUANT_EXECUTORCH_DIR={ARM_ET}",
    ]
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
         "-DSPINQUANT_BUILD_TESTS=OFF", "-DSPINQUANT_BUILD_EXECUTORCH_OPS=ON", f"-DPython_EXECUTABLE={sys.executable}",
         *(cross if arm64 else [])],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["cmake", "--build", str(build_dir), "-j2", "--target", "spinquant_runner"], check=True,
                   capture_output=True)  # fmt: skip
    return build_dir / "export" / "spinquant_runner"
