"""What verifying an artifact's checksum adds to loading it (docs/RELIABILITY.md).

    python benchmarks/integrity_cost.py CHECKPOINT.safetensors PROGRAM.pte [--runs 5]

For an int4 checkpoint: median seconds of `load_quantized` and of the checksum verification inside it (the
file already in memory, as `load_quantized` has it). For a program: median seconds of `PteModel` open + the
prepacking first step, and of `spinquant_et_verify` (the C API both the runner and PteModel call; it maps the
file itself). Loads alternate with verifications in the same run, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from spinquant.checkpoint import load_quantized
    from spinquant.export.runtime import PteModel, load_library
    from spinquant.integrity import verify

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("program", type=Path)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()

    image = a.checkpoint.read_bytes()
    lib = load_library()

    def open_program() -> None:
        model = PteModel(a.program)
        model.prepack()
        model.close()

    rows = []
    for name, path, load, check in [
        ("int4 checkpoint", a.checkpoint, lambda: load_quantized(a.checkpoint), lambda: verify(image, "", True)),
        ("ExecuTorch program", a.program, open_program, lambda: lib.spinquant_et_verify(str(a.program).encode())),
    ]:
        load_s = median_seconds(load, a.runs)
        check_s = median_seconds(check, a.runs)
        size = path.stat().st_size
        rows.append(
            f"| {name} | {size / 1e6:.0f} MB | {load_s:.3f} | {check_s * 1e3:.1f} | {size / check_s / 1e9:.1f} | "
            f"{100 * check_s / load_s:.1f} % |"
        )
    print(f"median of {a.runs} runs each\n")
    print("| artifact | size | load s (incl. verify) | verify ms | verify GB/s | verify / load |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
