"""Markdown tables from a pytest-benchmark JSON of the kernel micro-benchmarks, one table per group.

python benchmarks/kernel_table.py benchmarks/results/kernels.json > benchmarks/results/kernels.md
"""

from __future__ import annotations

import argparse
import json
from itertools import groupby
from pathlib import Path


def header(data: dict) -> str:
    """Date, commit, machine and load of the run."""
    m, c = data["machine_info"], data.get("commit_info", {})
    load = ", ".join(str(x) for x in m.get("load_average", []))
    return (
        f"{data['datetime'][:16].replace('T', ' ')} UTC, commit {c.get('id', '?')[:7]}"
        f"{' (dirty)' if c.get('dirty') else ''}; {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, "
        f"ISA {m.get('spinquant_isa', '?')}, load average at the start {load}"
    )


def row(bench: dict) -> str:
    """One benchmark: its name and parameters, median and min time, and the extra_info figures it has."""
    stats, info = bench["stats"], bench["extra_info"]
    name = bench["name"].removeprefix("test_")
    gbs = f"{info['gbs']:.1f}" if "gbs" in info else ""
    floor = f"{info['of_floor']:.2f}" if "of_floor" in info else ""
    gmacs = f"{info['gmac_per_s']:.1f}" if "gmac_per_s" in info else ""
    return f"| {name} | {stats['median'] * 1e6:.1f} | {stats['min'] * 1e6:.1f} | {gbs} | {floor} | {gmacs} |"


def tables(data: dict) -> str:
    """Every group's table under the run's header."""
    out = [header(data), ""]
    benches = sorted(data["benchmarks"], key=lambda b: (b["group"] or "", b["stats"]["median"]))
    for group, members in groupby(benches, key=lambda b: b["group"] or ""):
        out += [
            f"### {group}",
            "",
            "| benchmark | median us | min us | GB/s | of floor | GMAC/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        out += [row(b) for b in members]
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path, help="output of pytest --benchmark-json")
    print(tables(json.loads(p.parse_args().json.read_text())))


if __name__ == "__main__":
    main()
