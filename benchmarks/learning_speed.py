"""Rotation learning speed on the default model: seconds and peak RSS per 1k tokens, variants interleaved.

    python benchmarks/learning_speed.py --before-src DIR [--rounds 2] [--steps 2] [--threads 2]

Each variant runs in a fresh process (its own peak RSS): load the model, fuse the norms, then `learn_rotations`
at W4A4KV4 with R3/R4 for `--steps` steps, timed apart from one weight clip search (the search runs every
`clip_every` = 8 steps). `before` imports the package from `--before-src` (e.g. the `python/` folder of an
earlier commit: `git archive <commit> python | tar -x -C DIR`), which has no speed options; the other
variants use this checkout. Rounds interleave the variants, so a busy machine slows all of them alike;
the table gives the median per variant and the extrapolated 100-step x 8 x 2048-token run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name: (sequences per step, tokens per sequence, micro-batch, compute dtype or None for the `before` code)
VARIANTS = {
    "before 1x2048 fp32": (1, 2048, None, None),
    "after 1x2048 fp32": (1, 2048, 1, "float32"),
    "after 8x2048 fp32": (8, 2048, 1, "float32"),
    "after 1x2048 bf16": (1, 2048, 1, "bfloat16"),
    "after 8x2048 bf16": (8, 2048, 1, "bfloat16"),
}
PAPER_STEPS, PAPER_BATCH, PAPER_SEQ, CLIP_EVERY = 100, 8, 2048, 8


def worker(name: str, steps: int) -> dict:
    """Time one variant in this process; returns its measurements."""
    import torch

    from spinquant.data import calibration_samples
    from spinquant.model import load_model
    from spinquant.quant.config import W4A4KV4
    from spinquant.rotation import fuse_norms, random_rotations
    from spinquant.train import learn_rotations, quantized_for_training, weight_clips

    batch, seq_len, micro, dtype = VARIANTS[name]
    base, tokenizer = load_model()
    model = fuse_norms(base)
    calib = calibration_samples(tokenizer, batch * steps, seq_len, seed=0)
    with quantized_for_training(model, W4A4KV4, True):
        start = time.perf_counter()
        weight_clips(model, W4A4KV4, *random_rotations(model.args, 0), True)
        search_s = time.perf_counter() - start
    speed = {} if dtype is None else {"micro_batch": micro, "compute_dtype": getattr(torch, dtype)}
    start = time.perf_counter()
    _, _, history = learn_rotations(model, W4A4KV4, calib, steps=steps, batch_size=batch, progress=False, **speed)
    learn_s = time.perf_counter() - start
    step_s = (learn_s - search_s) / steps  # the run searched clips once, at step 0
    return {
        "variant": name,
        "threads": torch.get_num_threads(),
        "step_s": step_s,
        "search_s": search_s,
        "s_per_1k_tokens": step_s / (batch * seq_len / 1000),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "losses": history,
    }


def run_variant(name: str, steps: int, threads: int, before_src: Path) -> dict:
    src = before_src if VARIANTS[name][3] is None else HERE.parent / "python"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--worker", name, "--steps", str(steps), "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def paper_minutes(step_s: float, search_s: float, batch: int) -> float:
    """The 100 x 8 x 2048 run extrapolated from a variant: its per-token step time, plus 13 clip searches."""
    per_token = step_s / (batch * PAPER_SEQ)
    searches = -(-PAPER_STEPS // CLIP_EVERY)
    return (PAPER_STEPS * PAPER_BATCH * PAPER_SEQ * per_token + searches * search_s) / 60


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-src", type=Path, help="python/ folder of the code to compare against")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    a = p.parse_args()
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(worker(a.worker, a.steps)))
        return
    names = [n for n in a.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if any(VARIANTS[n][3] is None for n in names) and a.before_src is None:
        p.error("the 'before' variant needs --before-src (the python/ folder of the earlier code)")
    rows: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(a.rounds):
        for name in names:
            row = run_variant(name, a.steps, a.threads, a.before_src)
            rows[name].append(row)
            print(f"round {r}: {json.dumps(row)}", flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    base = statistics.median(x["s_per_1k_tokens"] for x in rows[names[0]])
    print(f"\n| variant | s / step | s / 1k tokens | x vs {names[0]} | peak RSS GB | clip search s | 100x8x2048 min |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        med = {k: statistics.median(x[k] for x in rows[name]) for k in ("step_s", "s_per_1k_tokens", "search_s")}
        rss = max(x["peak_rss_gb"] for x in rows[name])
        minutes = paper_minutes(med["step_s"], med["search_s"], VARIANTS[name][0])
        print(
            f"| {name} | {med['step_s']:.1f} | {med['s_per_1k_tokens']:.2f} | {base / med['s_per_1k_tokens']:.2f} "
            f"| {rss:.2f} | {med['search_s']:.1f} | {minutes:.0f} |"
        )


if __name__ == "__main__":
    main()
