"""Why learning finds no better rotation on the default model: three measurements at the official recipe's target.

    PYTHONPATH=python python benchmarks/learning_diagnostics.py sweep --lrs 1.5,0.3,0.06 --steps 20 --every 5
    PYTHONPATH=python python benchmarks/learning_diagnostics.py neighbourhood --radii 1e-4,1e-3,1e-2
    PYTHONPATH=python python benchmarks/learning_diagnostics.py tangent [--no-had]

`sweep`: short `spinquant optimize --recipe official` runs (target W16A4KV4, gradients clipped to norm 1, bf16,
cosine lr) of `--steps` x `--batch-size` x 2048 tokens at several learning rates, from the same random Hadamard
start on the same samples; every `--every` steps the rotations are scored with the learning loss on held-out
windows (wiki's test part and c4, 2048 tokens, never learned on), and the random Hadamard rotations of `--seeds`
other seeds too, as the scale of what a rotation changes. Writes `results/lr-sweep.json` and `.png`.

`neighbourhood`: the held-out loss of the start turned by tiny rotations, R1 exp(r S) for `--draws` random
skew-symmetric S of unit norm (||dR1||_F = r; ||R1||_F = 24 on the default model): how smooth the quantized
loss is around a rotation. Writes `results/rotation-neighbourhood.json`.

`tangent`: at the start, on 2 training sequences, the norm of the learning gradient G of R1 and R2 and of its
part tangent to the rotations, skew(G R^T), which is all a Cayley step uses; the official trainer clips the
whole of G to norm 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from spinquant.data import calibration_samples, heldout_windows  # noqa: E402
from spinquant.model import load_model  # noqa: E402
from spinquant.recipes import recipe  # noqa: E402
from spinquant.rotation import fuse_norms, random_rotations, set_online_hadamards  # noqa: E402
from spinquant.train import (  # noqa: E402
    held_out_loss,
    learn_rotations,
    quantized_for_training,
    step_gradients,
    weight_clips,
)

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("sweep", "neighbourhood", "tangent"))
    p.add_argument("--lrs", default="1.5,0.3,0.06", help="comma-separated learning rates")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--every", type=int, default=10, help="score the rotations every N steps")
    p.add_argument("--windows", type=int, default=3, help="held-out windows of 2048 tokens per text")
    p.add_argument("--seeds", type=int, default=6, help="other random Hadamard seeds to score")
    p.add_argument("--radii", default="1e-4,1e-3,1e-2", help="comma-separated sizes of tiny turns of the start")
    p.add_argument("--draws", type=int, default=2, help="random turns per radius")
    p.add_argument("--had", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    official = recipe("official")
    cfg, clip = official.learn, official.train.grad_clip
    base, tokenizer = load_model()
    model = fuse_norms(copy.deepcopy(base))
    set_online_hadamards(model, a.had)
    if a.what == "tangent":
        tokens = calibration_samples(tokenizer, 2, a.seq_len, seed=a.seed)
        tangent(model, cfg, tokens, *random_rotations(base.args, a.seed), a.had)
        return
    windows = torch.cat([heldout_windows(tokenizer, d, 2048, a.windows) for d in ("wiki", "c4")])
    calib = calibration_samples(tokenizer, a.steps * a.batch_size, a.seq_len, seed=a.seed)

    def score(R1: torch.Tensor, R2: torch.Tensor) -> float:
        return held_out_loss(model, cfg, windows, R1, R2, a.had)

    if a.what == "neighbourhood":
        neighbourhood(score, *random_rotations(base.args, a.seed), [float(r) for r in a.radii.split(",")], a)
        return
    seeds = [score(*random_rotations(base.args, s)) for s in range(a.seed + 1, a.seed + 1 + a.seeds)]
    print(f"random Hadamard seeds: held-out loss {np.mean(seeds):.4f} +- {np.std(seeds, ddof=1):.4f}", flush=True)
    start = score(*random_rotations(base.args, a.seed))
    curves: dict[str, dict[int, float]] = {}
    for lr in (float(x) for x in a.lrs.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "state"
            learn_rotations(
                model, cfg, calib, steps=a.steps, lr=lr, batch_size=a.batch_size, seed=a.seed, had=a.had,
                checkpoint_path=state, checkpoint_every=a.every, resume=False, keep_states=True, progress=False,
                micro_batch=min(4, a.batch_size), compute_dtype=torch.bfloat16, grad_clip=clip,
            )  # fmt: skip
            curve = {0: start}
            for kept in sorted(Path(tmp).glob("state.*")):
                saved = torch.load(kept, map_location="cpu", weights_only=True)
                curve[saved["step"]] = score(saved["R1"], saved["R2"])
                print(f"lr {lr}: step {saved['step']} held-out loss {curve[saved['step']]:.4f}", flush=True)
        curves[str(lr)] = curve
    report(curves, seeds, a)


def tangent(model, cfg, tokens: torch.Tensor, R1: torch.Tensor, R2: torch.Tensor, had: bool) -> None:
    """Print |G| and |skew(G R^T)| for R1 and R2 (per-layer R2 stacked) at one learning step's gradient."""
    R1, R2 = R1.clone().requires_grad_(), R2.clone().requires_grad_()
    with quantized_for_training(model, cfg, had):
        clips = weight_clips(model, cfg, R1, R2, had)
        loss = step_gradients(model, cfg, tokens, R1, R2, had, clips, tokens.shape[0], torch.bfloat16)
    print(f"{'had' if had else 'no_had'}: loss {loss:.4f} on {tokens.shape[0]} x {tokens.shape[1]} tokens")
    for name, R in (("R1", R1), ("R2", R2)):
        G, X = R.grad.double().reshape(-1, *R.shape[-2:]), R.detach().double().reshape(-1, *R.shape[-2:])
        A = G @ X.transpose(1, 2)
        skew = 0.5 * (A - A.transpose(1, 2))
        print(f"{name}: |G| {G.norm():.3f}, tangent |skew(G R^T)| {skew.norm():.4f} ({skew.norm() / G.norm():.1%})")


def neighbourhood(score, R1: torch.Tensor, R2: torch.Tensor, radii: list[float], a: argparse.Namespace) -> None:
    """Held-out loss of the start and of R1 exp(r S) for random unit skew S, `a.draws` per radius."""
    out = {"start": score(R1, R2), "turned": {}}
    print(f"start: held-out loss {out['start']:.4f}", flush=True)
    g = torch.Generator().manual_seed(1)
    for r in radii:
        out["turned"][str(r)] = []
        for _ in range(a.draws):
            A = torch.randn(R1.shape, generator=g, dtype=torch.float64)
            S = (A - A.T) / (A - A.T).norm()
            turned = (R1.double() @ torch.linalg.matrix_exp(r * S)).to(R1.dtype)
            out["turned"][str(r)].append(score(turned, R2))
            print(f"||dR1|| {r:.0e}: held-out loss {out['turned'][str(r)][-1]:.4f}", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "rotation-neighbourhood.json").write_text(json.dumps(out, indent=2))


def report(curves: dict[str, dict[int, float]], seeds: list[float], a: argparse.Namespace) -> None:
    """Table, JSON and PNG."""
    print("\n| lr | " + " | ".join(f"step {s}" for s in next(iter(curves.values()))) + " |")
    for lr, curve in curves.items():
        print(f"| {lr} | " + " | ".join(f"{v:.4f}" for v in curve.values()) + " |")
    print(f"random seeds: {np.mean(seeds):.4f} +- {np.std(seeds, ddof=1):.4f} (min {min(seeds):.4f})")
    a.out.mkdir(parents=True, exist_ok=True)
    setup = {k: getattr(a, k) for k in ("steps", "batch_size", "seq_len", "windows", "had", "seed")}
    (a.out / "lr-sweep.json").write_text(json.dumps({"setup": setup, "curves": curves, "seeds": seeds}, indent=2))
    fig, ax = plt.subplots(figsize=(6, 4))
    for lr, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=f"lr {lr}")
    ax.axhspan(min(seeds), max(seeds), color="grey", alpha=0.2, label=f"{len(seeds)} random Hadamard seeds")
    ax.set_xlabel(f"step ({a.batch_size} x {a.seq_len} tokens each)")
    ax.set_ylabel("held-out learning loss (W16A4KV4)")
    ax.set_title("Official recipe, cut short: learning rate vs held-out loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out / "lr-sweep.png", dpi=120)


if __name__ == "__main__":
    main()
