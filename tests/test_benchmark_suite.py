"""The kernel micro-benchmarks (benchmarks/, pytest-benchmark) are outside the default test run; this keeps their
imports and parameters from rotting unseen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_benchmarks_collect():
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p", "no:cacheprovider"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for name in ("test_gemv_spinquant", "test_gemm_spinquant", "test_fwht_spinquant", "test_attention_quantized"):
        assert f"::{name}[" in out.stdout, f"{name} not collected"
