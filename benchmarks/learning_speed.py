"""Rotation learning speed on the default model: seconds and peak RSS per 1k tokens, variants interleaved.

    python benchmarks/learning_speed.py --before-src DIR [--prev-src DIR] [--target official] [--rounds 2]
    PYTHONPATH=DIR python benchmarks/learning_speed.py --worker "before 1x2048 fp32" --steps 1 --profile

Each variant runs in a fresh process (its own peak RSS): load the model, fuse the norms, then `learn_rotations`
at the learning target (`--target`: W4A4KV4, weights fake-quantized every step; or `official`, the official
recipe's W16A4KV4) with R3/R4 for `--steps` steps, timed apart from one weight clip search (W4A4KV4 only; it
runs every `clip_every` = 8 steps). A variant is "CODE BxT DTYPE [mbN]": CODE `before` imports the package from
`--before-src` (e.g. the `python/` folder of an earlier commit: `git archive <commit> python | tar -x -C DIR`),
which has no speed options, `prev` from `--prev-src` (an earlier commit that has them), `after` this checkout;
B sequences of T tokens a step, DTYPE fp32 or bf16 (the matmuls of the loss), N sequences a micro-batch
(default 1). Rounds interleave the variants, so a busy machine slows all of them alike; the table gives the
median per variant and the extrapolated 100-step x 8 x 2048-token run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("before 1x1024 fp32", "after 1x1024 fp32", "after 1x1024 bf16", "after 8x2048 bf16 mb4")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
CODES = ("before", "prev", "after")


def parse_variant(name: str) -> tuple[str, int, int, str, int]:
    """(code, sequences per step, tokens per sequence, torch dtype name, micro-batch) of a variant name."""
    try:
        code, shape, dtype, *micro = name.split()
        batch, seq_len = (int(n) for n in shape.split("x"))
        micro_batch = int(micro[0].removeprefix("mb")) if micro else 1
        if len(micro) > 1 or (micro and not micro[0].startswith("mb")):
            raise ValueError
    except ValueError:
        raise ValueError(f"variant {name!r} is not 'before|prev|after BxT fp32|bf16 [mbN]'") from None
    if code not in CODES or dtype not in DTYPES or (code == "before" and (dtype != "fp32" or micro_batch != 1)):
        raise ValueError(f"variant {name!r}: code before|prev|after, dtype fp32|bf16 (before: fp32, mb1 only)")
    return code, batch, seq_len, DTYPES[dtype], micro_batch


PAPER_STEPS, PAPER_BATCH, PAPER_SEQ, CLIP_EVERY = 100, 8, 2048, 8


def worker(name: str, steps: int, profile: bool, target: str) -> dict:
    """Time one variant in this process; returns its measurements (`profile`: prints torch.profiler's top ops)."""
    import torch
    from torch.profiler import ProfilerActivity

    from spinquant.data import calibration_samples
    from spinquant.model import load_model
    from spinquant.quant.config import W4A4KV4
    from spinquant.rotation import fuse_norms, random_rotations
    from spinquant.train import learn_rotations, quantized_for_training, weight_clips

    code, batch, seq_len, dtype, micro_batch = parse_variant(name)
    if target == "official":
        from spinquant.recipes import recipe

        cfg = recipe("official").learn
    else:
        cfg = W4A4KV4
    base, tokenizer = load_model()
    model = fuse_norms(base)
    calib = calibration_samples(tokenizer, batch * steps, seq_len, seed=0)
    with quantized_for_training(model, cfg, True):
        start, cpu = time.perf_counter(), time.process_time()
        weight_clips(model, cfg, *random_rotations(model.args, 0), True)
        search_s, search_cpu = time.perf_counter() - start, time.process_time() - cpu
    speed = {} if code == "before" else {"micro_batch": micro_batch, "compute_dtype": getattr(torch, dtype)}
    start, cpu = time.perf_counter(), time.process_time()
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) if profile else contextlib.nullcontext() as prof:
        _, _, history = learn_rotations(model, cfg, calib, steps=steps, batch_size=batch, progress=False, **speed)
    learn_s, learn_cpu = time.perf_counter() - start, time.process_time() - cpu
    if profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), file=sys.stderr)
    step_s = (learn_s - search_s) / steps  # the run searched clips once, at step 0
    return {
        "variant": name,
        "threads": torch.get_num_threads(),
        "step_s": step_s,
        "search_s": search_s,
        "s_per_1k_tokens": step_s / (batch * seq_len / 1000),
        "cpu_s_per_1k_tokens": (learn_cpu - search_cpu) / steps / (batch * seq_len / 1000),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "losses": history,
    }


def run_variant(name: str, steps: int, threads: int, sources: dict[str, Path], target: str) -> dict:
    src = sources[parse_variant(name)[0]]
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--worker", name, "--steps", str(steps), "--threads", str(threads)]
    cmd += ["--target", target]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def paper_minutes(step_s: float, search_s: float, tokens: int) -> float:
    """The 100 x 8 x 2048 run extrapolated from a variant's step of `tokens`: its per-token time, plus 13 searches."""
    per_token = step_s / tokens
    searches = -(-PAPER_STEPS // CLIP_EVERY)
    return (PAPER_STEPS * PAPER_BATCH * PAPER_SEQ * per_token + searches * search_s) / 60


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-src", type=Path, help="python/ folder of the code to compare against")
    p.add_argument("--prev-src", type=Path, help="python/ folder of an earlier code that has the speed options")
    p.add_argument("--target", choices=("W4A4KV4", "official"), default="W4A4KV4", help="what the loss quantizes")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated 'before|prev|after BxT DTYPE [mbN]'")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", help="run one variant in this process (set PYTHONPATH for 'before')")
    p.add_argument("--profile", action="store_true", help="with --worker: print torch.profiler's top ops")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    a = p.parse_args()
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(worker(a.worker, a.steps, a.profile, a.target)))
        return
    names = [n for n in a.variants.split(",") if n]
    try:
        codes = [parse_variant(n)[0] for n in names]
    except ValueError as err:
        p.error(str(err))
    sources = {"before": a.before_src, "prev": a.prev_src, "after": HERE.parent / "python"}
    for code in set(codes) - {"after"}:
        if sources[code] is None:
            p.error(f"the '{code}' variants need --{code}-src (the python/ folder of the earlier code)")
    if "before" in codes and a.target != "W4A4KV4":
        p.error("the 'before' code learns at --target W4A4KV4 only (it has no per-head o_proj quantizer)")
    rows: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(a.rounds):
        for name in names:
            row = run_variant(name, a.steps, a.threads, sources, a.target)
            rows[name].append(row)
            print(f"round {r}: {json.dumps(row)}", flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    base = statistics.median(x["s_per_1k_tokens"] for x in rows[names[0]])
    cpu_base = statistics.median(x["cpu_s_per_1k_tokens"] for x in rows[names[0]])
    print(
        f"\n| variant | s / step | s / 1k tokens | x vs {names[0]} | CPU s / 1k tokens | x (CPU) | peak RSS GB "
        "| clip search s | 100x8x2048 min |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        keys = ("step_s", "s_per_1k_tokens", "search_s", "cpu_s_per_1k_tokens")
        med = {k: statistics.median(x[k] for x in rows[name]) for k in keys}
        rss = max(x["peak_rss_gb"] for x in rows[name])
        _, batch, seq_len, _, _ = parse_variant(name)
        minutes = paper_minutes(med["step_s"], med["search_s"], batch * seq_len)
        print(
            f"| {name} | {med['step_s']:.1f} | {med['s_per_1k_tokens']:.2f} | {base / med['s_per_1k_tokens']:.2f} "
            f"| {med['cpu_s_per_1k_tokens']:.2f} | {cpu_base / med['cpu_s_per_1k_tokens']:.2f} "
            f"| {rss:.2f} | {med['search_s']:.1f} | {minutes:.0f} |"
        )


if __name__ == "__main__":
    main()
