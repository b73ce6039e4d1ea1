"""Cost of one learning step per 1k tokens, plain (`rotation_loss` + backward, float32) vs fast (`step_gradients`),
on a random model of the default model's shapes with few layers, interleaved in one process.

    python benchmarks/learning_step_cost.py [--layers 1,2] [--tokens 2048] [--batch 8] [--rounds 2] [--threads 1]

Loading nothing from disk, it runs where `learning_speed.py` (the real model, one process per variant) cannot
finish: on a crowded machine. Time per step is fitted as `head + layers x per_layer` from two depths and
extrapolated to the default model's 30 layers. It reports process CPU seconds (steadier than wall time when
the cores are shared) and wall seconds, medians over the rounds; the weight clip search is left out (both
paths share it). The fast path runs `--batch` sequences a step (its fixed cost, rotating and fake-quantizing
the weights, is shared by them); the plain one `--plain-batch` (its whole batch is one graph: 8 x 2048 tokens
do not fit in memory).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spinquant.model import tiny_model
from spinquant.quant.config import W4A4KV4
from spinquant.rotation import fuse_norms, random_rotations
from spinquant.train import quantized_for_training, rotation_loss, step_gradients, weight_clips

# SmolLM2-135M's shapes (assets.DEFAULT_MODEL_NAME), layers set per run
SHAPES = dict(dim=576, hidden_dim=1536, n_heads=9, n_kv_heads=3, head_dim=64, vocab_size=49152, max_seq_len=4096)
FULL_LAYERS = 30


def step_cost(model, tokens: torch.Tensor, fast: torch.dtype | None, clips: dict) -> tuple[float, float]:
    """(CPU s, wall s) of one step's loss and gradients: plain float32 (fast=None) or step_gradients in `fast`."""
    R1, R2 = (r.requires_grad_() for r in random_rotations(model.args, 0))
    cpu, wall = time.process_time(), time.perf_counter()
    if fast is None:
        rotation_loss(model, W4A4KV4, tokens, R1, R2, True, clips).backward()
    else:
        step_gradients(model, W4A4KV4, tokens, R1, R2, True, clips, micro_batch=1, compute_dtype=fast)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="1,2", help="two depths to fit head + per-layer cost")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=8, help="sequences per step of the fast path")
    p.add_argument("--plain-batch", type=int, default=1, help="sequences per step of the plain path")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    variants = {"plain fp32": None, "fast fp32": torch.float32, "fast bf16": torch.bfloat16}
    depths = [int(n) for n in a.layers.split(",")]
    cost: dict[tuple[str, int], list[tuple[float, float]]] = {}
    tokens = torch.randint(0, SHAPES["vocab_size"], (a.batch, a.tokens), generator=torch.Generator().manual_seed(0))
    batch = {name: a.plain_batch if dtype is None else a.batch for name, dtype in variants.items()}
    for depth in depths:
        model = fuse_norms(tiny_model(seed=0, n_layers=depth, **SHAPES))
        with quantized_for_training(model, W4A4KV4, True):
            clips = weight_clips(model, W4A4KV4, *random_rotations(model.args, 0), True)
            for _ in range(a.rounds):
                for name, dtype in variants.items():
                    seconds = step_cost(model, tokens[: batch[name]], dtype, clips)
                    cost.setdefault((name, depth), []).append(
                        tuple(x / (batch[name] * a.tokens / 1000) for x in seconds)
                    )
    lo, hi = depths
    print(
        f"plain {a.plain_batch} / fast {a.batch} x {a.tokens} tokens a step, {a.threads} thread(s), {a.rounds} rounds\n"
    )
    print("| variant | " + " | ".join(f"{d} layers CPU s / 1k tok" for d in depths) + " | 30 layers CPU s / 1k tok "
          "| x (CPU) | 30 layers wall s / 1k tok | x (wall) |")  # fmt: skip
    print("|---|" + "---|" * (len(depths) + 4))
    full = {}
    for name in variants:
        med = {d: [statistics.median(c[i] for c in cost[(name, d)]) for i in (0, 1)] for d in depths}
        full[name] = [med[lo][i] + (med[hi][i] - med[lo][i]) / (hi - lo) * (FULL_LAYERS - lo) for i in (0, 1)]
    for name in variants:
        med = [statistics.median(c[0] for c in cost[(name, d)]) for d in depths]
        cpu, wall = full[name]
        base_cpu, base_wall = full["plain fp32"]
        cells = " | ".join(f"{m:.2f}" for m in med)
        print(f"| {name} | {cells} | {cpu:.2f} | {base_cpu / cpu:.2f} | {wall:.2f} | {base_wall / wall:.2f} |")


if __name__ == "__main__":
    main()
