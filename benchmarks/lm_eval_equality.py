"""Our lm-eval adapter (fp32 and bf16) against lm-eval's own `hf` model on the default fp32 model.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/lm_eval_equality.py --limit 200

Scores the first `limit` documents of each task three ways (our adapter in fp32, in bf16, and `--model hf`),
and prints per task the documents compared, the largest per-choice log-likelihood difference, whether the
predictions (acc and acc_norm) agree document by document, the accuracies, and documents per second.
"""

from __future__ import annotations

import argparse
import time

import lm_eval
import torch

from spinquant import assets
from spinquant.eval import harness
from spinquant.model import load_model


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def predictions(results: dict) -> dict[str, list[tuple[float, float]]]:
    """Per task, each logged document's (acc, acc_norm) hit (acc_norm = acc where the task has none)."""
    return {
        task: [(s["acc"], s.get("acc_norm", s["acc"])) for s in sorted(samples, key=lambda s: s["doc_id"])]
        for task, samples in results["samples"].items()
    }


def max_difference(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for da, db in zip(a, b, strict=True) for x, y in zip(da, db, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=200, help="first N documents of each task")
    p.add_argument("--tasks", default=",".join(harness.DEFAULT_TASKS))
    p.add_argument("--hf-batch-size", type=int, default=16, help="lm-eval `hf` batch size")
    a = p.parse_args()
    tasks = a.tasks.split(",")
    folder = assets.default_model_dir()
    model, tokenizer = load_model(folder)
    harness.load_tasks(tasks)  # index and read the data once, outside the timings

    runs, seconds = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        lm = harness.SpinQuantLM(model, tokenizer, dtype=dtype, progress=True)
        runs[name], seconds[name] = timed(lambda lm=lm: harness.run_lm_eval(lm, tasks, a.limit, log_samples=True))
    report(runs, seconds, tasks, a)  # bf16 against fp32 first: the hf run is the slow one
    runs["hf"], seconds["hf"] = timed(
        lambda: lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(folder), "dtype": "float32", "device": "cpu"},
            batch_size=a.hf_batch_size,
            tasks=harness.load_tasks(tasks),
            task_manager=harness.task_manager(),
            limit=a.limit,
            log_samples=True,
        )
    )
    report(runs, seconds, tasks, a)


def report(runs: dict, seconds: dict, tasks: list[str], a: argparse.Namespace) -> None:
    """Markdown tables: per task the fp32-bf16 (and, once run, ours-hf) comparison; documents per second."""
    lls = {name: harness.document_loglikelihoods(r) for name, r in runs.items()}
    hits = {name: predictions(r) for name, r in runs.items()}
    n_docs = sum(len(v) for v in lls["fp32"].values())
    print(f"\n{a.limit} documents a task, torch threads {torch.get_num_threads()}\n")
    print(
        "| task | docs | max abs LL diff ours-hf | predictions equal ours/hf | acc ours / hf | acc_norm ours / hf "
        "| max abs LL diff bf16-fp32 | predictions changed by bf16 | acc / acc_norm bf16 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for task in tasks:
        ours, bf16 = runs["fp32"]["results"][task], runs["bf16"]["results"][task]
        hf = runs["hf"]["results"][task] if "hf" in runs else None
        norm = "acc_norm,none" if "acc_norm,none" in ours else "acc,none"
        flips = sum(x != y for x, y in zip(hits["fp32"][task], hits["bf16"][task], strict=True))
        if hf is None:
            vs_hf = "| - | - | - | -"
        else:
            same = sum(x == y for x, y in zip(hits["fp32"][task], hits["hf"][task], strict=True))
            vs_hf = (
                f"| {max_difference(lls['fp32'][task], lls['hf'][task]):.1e} | {same}/{len(hits['hf'][task])} "
                f"| {ours['acc,none']:.3f} / {hf['acc,none']:.3f} | {ours[norm]:.3f} / {hf[norm]:.3f}"
            )
        print(
            f"| {task} | {len(lls['fp32'][task])} {vs_hf} "
            f"| {max_difference(lls['fp32'][task], lls['bf16'][task]):.2f} "
            f"| {flips} | {bf16['acc,none']:.3f} / {bf16[norm]:.3f} |"
        )
    print("\n| run | seconds | documents/s |\n|---|---|---|")
    labels = {"fp32": "adapter fp32", "bf16": "adapter bf16", "hf": f"lm-eval hf (batch {a.hf_batch_size})"}
    for name in runs:
        print(f"| {labels[name]} | {seconds[name]:.0f} | {n_docs / seconds[name]:.2f} |")


if __name__ == "__main__":
    main()
