"""Output hygiene: third-party lines that do not apply to a CPU-only install stay out; everything else passes."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import spinquant  # noqa: F401  (installs the filters)


@pytest.mark.parametrize(
    ("logger", "message", "shown"),
    [
        ("torchao", "Failed to load /x/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: no CUDA", False),
        ("torchao", "Failed to load /x/site-packages/torchao/_C_cutlass_90a.abi3.so: Could not load", False),
        ("torchao", "Failed to load /x/site-packages/torchao/_C.abi3.so: undefined symbol", True),
        ("torchao", "Skipping import of cpp extensions due to incompatible torch version", True),
        ("torch.utils._pytree", "<enum 'X'> is an Enum subclass and is now natively supported by torch.compile", False),
        ("torch.utils._pytree", "something else", True),
    ],
)
def test_only_inapplicable_messages_are_dropped(caplog, logger, message, shown):
    with caplog.at_level(logging.WARNING, logger=logger):
        logging.getLogger(logger).warning(message)
    assert (message in caplog.text) == shown


def test_runtime_and_export_imports_print_nothing():
    """Importing the exporter (which imports torchao), loading the op library and resizing ExecuTorch's thread
    pool print nothing: no CUDA-library or deprecation lines, no runtime info lines."""
    code = (  # spinquant first, as its commands do: it installs the log filters on import
        "from spinquant.export import bench, runtime\n"
        "import executorch.exir\n"
        "runtime.load_library()\n"
        "bench._resize_executorch_pool(1)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "" and out.stderr == "", out.stdout[-2000:] + out.stderr[-2000:]
