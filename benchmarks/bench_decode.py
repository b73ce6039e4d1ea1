"""Decode ms/token and prefill tokens/s: fp32 eager, ExecuTorch XNNPACK 8da4w, and our .pte programs
(W4A8 no_had, W4A8 had, W4A4KV4 had), all built from SmolLM2-135M, timed side by side in one run.

    python benchmarks/bench_decode.py [--threads 1,2] [--runs 5] [--out benchmarks/results] [--name decode-short]

Same as `spinquant bench`; writes NAME.md, NAME.json and NAME.png to --out (.pte files are kept there and reused
by later runs).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from spinquant.export.cli import bench_add_arguments, bench_main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_add_arguments(parser)
    sys.exit(bench_main(parser.parse_args()))
