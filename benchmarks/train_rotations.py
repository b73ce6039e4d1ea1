"""Rotation learning on the real model: seconds per step, peak RSS and the held-out loss before and after.

    PYTHONPATH=python python benchmarks/train_rotations.py --steps 60 --seq-len 256 [--precision W4A4KV4]

The held-out loss is the fake-quantized model's cross-entropy on test windows (not seen in training), with
the random Hadamard start and with the learned rotations.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from spinquant.data import calibration_samples, test_windows  # noqa: E402
from spinquant.model import load_model  # noqa: E402
from spinquant.quant.config import QuantConfig  # noqa: E402
from spinquant.rotation import fuse_norms, random_rotations  # noqa: E402
from spinquant.train import held_out_loss, learn_rotations  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1.5)
    p.add_argument("--precision", default="W4A4KV4")
    p.add_argument("--no-had", action="store_true")
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    had = not a.no_had
    base, tokenizer = load_model(None)
    model = fuse_norms(base)
    cfg = QuantConfig.preset(a.precision)
    calib = calibration_samples(tokenizer, a.steps * a.batch_size, a.seq_len, seed=a.seed)
    held_out = test_windows(tokenizer, a.seq_len, a.eval_windows)
    R1_0, R2_0 = random_rotations(model.args, a.seed, "hadamard")
    before = held_out_loss(model, cfg, held_out, R1_0, R2_0, had)
    start, cpu_start = time.perf_counter(), time.process_time()
    R1, R2, history = learn_rotations(
        model, cfg, calib, steps=a.steps, lr=a.lr, batch_size=a.batch_size, seed=a.seed, had=had, progress=False
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    after = held_out_loss(model, cfg, held_out, R1, R2, had)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    k = max(1, len(history) // 10)
    print(f"{cfg.name} had={had} steps={a.steps} seq_len={a.seq_len} batch={a.batch_size} lr={a.lr}")
    print(f"sec/step {seconds / a.steps:.2f} wall, {cpu / a.steps:.2f} CPU ({torch.get_num_threads()} threads)")
    print(f"total {seconds:.0f} s  peak RSS {rss:.2f} GiB  load average {os.getloadavg()[0]:.1f}")
    print(f"train loss first {k}: {sum(history[:k]) / k:.4f}  last {k}: {sum(history[-k:]) / k:.4f}")
    print(f"held-out loss ({a.eval_windows} x {a.seq_len}): random Hadamard {before:.4f} -> learned {after:.4f}")
    print("history " + " ".join(f"{x:.3f}" for x in history))


if __name__ == "__main__":
    main()
