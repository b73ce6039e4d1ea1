"""Two main-job results (`spinquant pipeline ... results.json`) compared row by row on the windows both scored.

A run with every window (`--ppl-windows 0`) holds the windows of a run with N spread ones (`data.heldout_windows`
picks them evenly from the same tiling), so a row of one run pairs with the same row of the other window by window:
the paired difference of mean NLL (b - a) with its 95% bootstrap CI says how much a setting that differs between
the runs (e.g. `--gptq-samples 32` vs `128`) moves that row. Rows match on recipe, precision, weights and method
(QuaRot: seed 0).

    python benchmarks/compare_runs.py runs/default/results.json runs/whole/results.json \
        --out benchmarks/results/gptq-calibration.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spinquant.eval.perplexity import Perplexity, paired_difference


def _rows(results: dict) -> dict[tuple, dict]:
    """Rows by (recipe, precision, weights, method without its seed count)."""
    return {(r["recipe"], r["precision"], r["w_method"], r["method"].split(" (")[0]): r for r in results["rows"]}


def _shared(a: list[float], b: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-window NLLs of the windows both scored: the longer list is the whole tiling, the shorter its spread
    subset (the same windows when both are equally long)."""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    index = np.linspace(0, len(long_) - 1, len(short)).round().astype(np.int64)
    picked = np.asarray(long_)[index]
    return (np.asarray(short), picked) if short is a else (picked, np.asarray(short))


def compare(a: dict, b: dict) -> list[str]:
    """Markdown lines: each shared row's perplexity in a and b on the shared windows, and the paired difference."""
    ra, rb = _rows(a), _rows(b)
    lines = [
        "| row | domain | windows | ppl a | ppl b | ΔNLL b - a [95% CI] | significant |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for key in [k for k in ra if k in rb]:
        for domain, seeds in ra[key]["perplexity"].items():
            na, nb = _shared(seeds[0]["nll"], rb[key]["perplexity"][domain][0]["nll"])
            diff = paired_difference(nb, na)
            lo, hi = diff.lo, diff.hi
            pa, pb = Perplexity.of(na).value, Perplexity.of(nb).value
            lines.append(
                f"| {' '.join(key)} | {domain} | {len(na)} | {pa:.2f} | {pb:.2f} | "
                f"{diff.mean:+.4f} [{lo:+.4f}, {hi:+.4f}] | {'yes' if diff.significant else 'no'} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="results.json of the first run")
    parser.add_argument("b", type=Path, help="results.json of the second run")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args()
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    settings = [f"{p}: " + ", ".join(f"{k} {r['settings'][k]}" for k in ("gptq_samples", "ppl_windows", "steps"))
                for p, r in ((args.a, a), (args.b, b))]  # fmt: skip
    text = "\n".join([*(f"- {s}" for s in settings), "", *compare(a, b)]) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
