"""How much the choice of random rotation matters, and where learned rotations help (the paper's Fig. 1 / 5).

    PYTHONPATH=python python benchmarks/rotation_variance.py --seeds 20 \
        --rotation "short run=runs/default/rotations-official-had.safetensors" --out benchmarks/results

1. `rotation-variance.png`: held-out perplexity (wiki + c4 windows, pooled) of W4A4KV4 with RTN weights
   (the official recipe, weights RTN instead of GPTQ: cheap) for `--seeds` random Hadamard R1/R2 (QuaRot,
   with R3/R4) as a histogram, each `--rotation` file marked.
2. `activation-sqnr.png`: per layer, the signal-to-quantization-noise ratio (dB) of the 4-bit activations
   (the inputs of every linear, as their quantizers see them: sum x^2 / sum (q(x) - x)^2 over the layer's
   linears and tokens) for the random seeds (mean and range) and each rotation file.
Prints both as tables and writes `rotation-variance.json`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from spinquant.checkpoint import load_rotations  # noqa: E402
from spinquant.data import HELDOUT_DOMAINS, heldout_windows  # noqa: E402
from spinquant.eval.perplexity import window_nlls  # noqa: E402
from spinquant.model import load_model  # noqa: E402
from spinquant.pipeline import prepare  # noqa: E402
from spinquant.recipes import recipe  # noqa: E402
from spinquant.rotation import random_rotations  # noqa: E402


class NoiseMeter(torch.nn.Module):
    """Wraps an activation quantizer: passes q(x) on and adds up sum x^2 and sum (q(x) - x)^2."""

    def __init__(self, quantizer: torch.nn.Module):
        super().__init__()
        self.quantizer, self.signal, self.noise = quantizer, 0.0, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantizer(x)
        self.signal += float(x.double().square().sum())
        self.noise += float((q - x).double().square().sum())
        return q


def pooled_ppl_and_sqnr(model, windows: dict[str, torch.Tensor]) -> tuple[float, list[float]]:
    """(perplexity over all windows of every domain, SQNR in dB per layer)."""
    meters = []
    for layer in model.layers:
        row = []
        for _, module in layer.named_modules():
            if getattr(module, "act_quant", None) is not None:
                module.act_quant = NoiseMeter(module.act_quant)
                row.append(module.act_quant)
        meters.append(row)
    nll = np.concatenate([window_nlls(model, w, progress=False) for w in windows.values()])
    sqnr = [10 * np.log10(sum(m.signal for m in row) / sum(m.noise for m in row)) for row in meters]
    return float(np.exp(nll.mean())), sqnr


def plot(random_ppl, marked, random_sqnr, marked_sqnr, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    label = f"{len(random_ppl)} random Hadamard seeds"
    a.hist(random_ppl, bins=min(12, len(random_ppl)), color="tab:gray", label=label)
    for (name, value), color in zip(marked.items(), ("tab:red", "tab:blue", "tab:green", "tab:purple"), strict=False):
        a.axvline(value, color=color, lw=2, label=f"{name}: {value:.2f}")
    a.set_xlabel("perplexity (held-out wiki + c4)")
    a.set_ylabel("seeds")
    a.set_title(title)
    a.legend(fontsize=8)
    layers = np.arange(len(random_sqnr[0]))
    arr = np.array(random_sqnr)
    b.fill_between(layers, arr.min(0), arr.max(0), color="tab:gray", alpha=0.3, label="random seeds (range)")
    b.plot(layers, arr.mean(0), color="tab:gray", label="random seeds (mean)")
    for (name, values), color in zip(marked_sqnr.items(), ("tab:red", "tab:blue", "tab:green"), strict=False):
        b.plot(layers, values, color=color, label=name)
    b.set_xlabel("layer")
    b.set_ylabel("SQNR of 4-bit activations (dB)")
    b.set_title("activation quantization noise per layer (higher is better)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reusable_seeds(path: Path, results: dict) -> dict[int, dict]:
    """The random seeds' rows of an earlier run at the same settings and windows, by seed ({} if none)."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if (earlier.get("config"), earlier.get("windows")) != (results["config"], results["windows"]):
        return {}
    return {r["seed"]: r for r in earlier["random"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--rotation", action="append", default=[], help="NAME=PATH of a rotation file to mark")
    p.add_argument("--windows", type=int, default=4, help="2048-token windows per held-out text")
    p.add_argument("--precision", default="W4A4KV4")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument(
        "--reuse-seeds", action="store_true", help="take the random seeds' figures from --out's JSON when it matches"
    )
    a = p.parse_args()
    base, tokenizer = load_model(None)
    windows = {d: heldout_windows(tokenizer, d, 2048, a.windows) for d in HELDOUT_DOMAINS}
    cfg = recipe("official").config(a.precision, w_method="rtn")
    files = dict(item.split("=", 1) for item in a.rotation)
    results = {"config": str(cfg), "windows": {d: list(w.shape) for d, w in windows.items()}, "random": []}
    earlier = reusable_seeds(a.out / "rotation-variance.json", results) if a.reuse_seeds else {}
    for seed in range(a.seeds):
        if seed in earlier:
            results["random"].append(earlier[seed])
            continue
        model = prepare(base, cfg, random_rotations(base.args, seed), True, None)
        ppl, sqnr = pooled_ppl_and_sqnr(model, windows)
        results["random"].append({"seed": seed, "ppl": ppl, "sqnr_db": sqnr})
        print(f"seed {seed:2d}: ppl {ppl:.3f}  mean SQNR {np.mean(sqnr):.2f} dB", flush=True)
    results["files"] = {}
    for name, path in files.items():
        R1, R2, info = load_rotations(path, base)
        model = prepare(base, cfg, (R1, R2), bool(info.get("had", True)), None)
        ppl, sqnr = pooled_ppl_and_sqnr(model, windows)
        results["files"][name] = {"path": path, "ppl": ppl, "sqnr_db": sqnr}
        print(f"{name}: ppl {ppl:.3f}  mean SQNR {np.mean(sqnr):.2f} dB", flush=True)
    ppls = [r["ppl"] for r in results["random"]]
    spread = f"std {np.std(ppls, ddof=1):.3f} min {min(ppls):.3f} max {max(ppls):.3f}"
    print(f"random seeds: mean {np.mean(ppls):.3f} {spread}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "rotation-variance.json").write_text(json.dumps(results, indent=1))
    plot(
        ppls,
        {n: r["ppl"] for n, r in results["files"].items()},
        [r["sqnr_db"] for r in results["random"]],
        {n: r["sqnr_db"] for n, r in results["files"].items()},
        a.out / "rotation-variance.png",
        f"{cfg.name}, RTN weights: perplexity by rotation",
    )
    print(f"wrote {a.out / 'rotation-variance.png'}")


if __name__ == "__main__":
    main()
