"""pytest-benchmark set-up of the kernel micro-benchmarks (how to run and compare them: benchmarks/README.md)."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from spinquant import kernels


@pytest.fixture
def torch_threads():
    """Set torch's intra-op threads for one benchmark; restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def pytest_benchmark_update_machine_info(config, machine_info):
    """The CPU model, core count, the kernels' ISA and the load average, saved with every JSON."""
    machine_info.update(
        cpu_model=_lscpu_model(),
        cores=os.cpu_count(),
        spinquant_isa=kernels.active_isa(),
        load_average=[round(x, 2) for x in os.getloadavg()],
    )
