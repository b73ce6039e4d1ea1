"""Ship a paper-scale rotation: its held-out learning curve, a PNG of both curves, and the file in the package.

    python benchmarks/ship_rotations.py --rotation runs/paper/rotations-official-had.safetensors \
        --name smollm2-135m-official-had --command "spinquant optimize ..." --commit abc1234 [--windows 4]

Reads the run's kept states (`spinquant optimize --keep-states` writes `.<out>.resume.<step>` beside `--out`),
scores each state's rotations and the random Hadamard start (the run's seed) with the learning loss on held-out
windows (wiki's test part and c4, 2048 tokens, spread over each text; never learned on), then writes:
`benchmarks/results/learning-curve-<name>.png` / `.json`, and the rotation file, with its provenance (command,
commit, date, the train losses per step, the held-out curve) in its metadata, to
`python/spinquant/rotation/learned/<name>.safetensors`, where `--rotation <name>` finds it.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from spinquant.checkpoint import load_rotations, save_rotations  # noqa: E402
from spinquant.data import heldout_windows  # noqa: E402
from spinquant.model import load_model  # noqa: E402
from spinquant.quant.config import QuantConfig  # noqa: E402
from spinquant.rotation import fuse_norms, random_rotations  # noqa: E402
from spinquant.rotation.shipped import SHIPPED_DIR  # noqa: E402
from spinquant.train import held_out_loss  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def states(rotation: Path) -> dict[int, Path]:
    """The kept states of the run that wrote `rotation`, by step."""
    prefix = f".{rotation.name}.resume."
    return {int(p.name.removeprefix(prefix)): p for p in rotation.parent.glob(prefix + "*")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rotation", type=Path, required=True, help="the rotation file `spinquant optimize` wrote")
    p.add_argument("--name", required=True, help="short name to ship it under")
    p.add_argument("--command", help="the optimize command (default: the one the file records)")
    p.add_argument("--commit", help="the commit it ran at (default: the one the file records)")
    p.add_argument("--windows", type=int, default=4, help="held-out windows of 2048 tokens per text")
    p.add_argument("--every", type=int, default=10, help="score every N-th step's state")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=RESULTS, help="where the PNG and JSON go")
    p.add_argument("--ship-dir", type=Path, default=SHIPPED_DIR, help="where the rotation file goes")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    base, tokenizer = load_model()
    R1, R2, info = load_rotations(a.rotation, base)
    cfg = QuantConfig.from_dict(info["config"])
    windows = torch.cat([heldout_windows(tokenizer, d, 2048, a.windows) for d in ("wiki", "c4")])
    kept = states(a.rotation)
    last = torch.load(kept[max(kept)], map_location="cpu", weights_only=True)
    model = fuse_norms(copy.deepcopy(base))
    curve = {0: held_out_loss(model, cfg, windows, *random_rotations(base.args, info["seed"]), info["had"])}
    for step in sorted(s for s in kept if s % a.every == 0):
        state = torch.load(kept[step], map_location="cpu", weights_only=True)
        curve[step] = held_out_loss(model, cfg, windows, state["R1"], state["R2"], info["had"])
        print(f"step {step}: held-out loss {curve[step]:.4f}", flush=True)
    train = list(last["history"])
    plot(train, curve, a.name, a.results / f"learning-curve-{a.name}.png")
    held = {"start": curve[0], "learned": curve[max(curve)], "windows": f"{a.windows} wiki + {a.windows} c4 x 2048"}
    held["curve"] = {str(k): v for k, v in curve.items()}
    (a.results / f"learning-curve-{a.name}.json").write_text(json.dumps({"train": train, "heldout": held}, indent=2))
    info.update(command=a.command or info.get("command"), commit=a.commit or info.get("commit"), losses=train)
    info.update(date=info.get("date") or time.strftime("%Y-%m-%d", time.gmtime()), heldout_loss=held)
    out = save_rotations(a.ship_dir / f"{a.name}.safetensors", base, R1, R2, info)
    print(f"wrote {out}: held-out loss {held['start']:.4f} -> {held['learned']:.4f}")


def plot(train: list[float], curve: dict[int, float], name: str, path: Path) -> None:
    """Train loss per step (and its 10-step mean) and the held-out loss of the kept states."""
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = range(len(train))  # the loss of step i is taken before its update: state i
    ax.plot(steps, train, color="0.75", lw=1, label="train loss (one step's batch)")
    mean = [sum(train[max(0, i - 9) : i + 1]) / len(train[max(0, i - 9) : i + 1]) for i in range(len(train))]
    ax.plot(steps, mean, color="C0", lw=2, label="train loss, mean of 10 steps")
    ax.plot(list(curve), list(curve.values()), "o-", color="C3", label="held-out loss (wiki + c4)")
    ax.set_xlabel("Cayley SGD step")
    ax.set_ylabel("cross-entropy at the learning target")
    ax.set_title(f"{name}: rotation learning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
