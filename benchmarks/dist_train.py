"""Rotation learning on the default model, 1 process or N under torchrun: seconds per step, peak RSS per rank, and
the estimate of `spinquant.memory` for the same run.

    PYTHONPATH=python python benchmarks/dist_train.py --steps 4 --batch-size 2 --seq-len 256 --threads 1
    PYTHONPATH=python torchrun --standalone --nproc_per_node 2 benchmarks/dist_train.py --steps 4 --batch-size 2 \
        --seq-len 256 --threads 1 [--fsdp]

Prints one JSON line (rank 0). Steps are timed after loading, between barriers; RSS peaks include loading (and
are also reported right after loading, tokenizing and fusing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch
import torch.distributed as dist

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from spinquant.data import calibration_samples  # noqa: E402
from spinquant.distributed import process_group  # noqa: E402
from spinquant.memory import estimate_memory  # noqa: E402
from spinquant.model import load_model  # noqa: E402
from spinquant.quant.config import QuantConfig  # noqa: E402
from spinquant.rotation import fuse_norms  # noqa: E402
from spinquant.train import learn_rotations  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2, help="global batch (sequences per step over all ranks)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--precision", default="W4A4KV4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fsdp", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with process_group() as world:
        base, tokenizer = load_model(None, sharded=a.fsdp)  # --fsdp: each rank reads only its shards
        model = fuse_norms(base)
        calib = calibration_samples(tokenizer, a.steps * a.batch_size, a.seq_len, seed=0)
        cfg = QuantConfig.preset(a.precision)
        load_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if world.size > 1:
            dist.barrier()
        start = time.perf_counter()
        _, _, history = learn_rotations(
            model, cfg, calib, steps=a.steps, batch_size=a.batch_size, progress=False, fsdp=a.fsdp
        )
        if world.size > 1:
            dist.barrier()
        seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peaks = [(load_rss, rss)] * world.size
        if world.size > 1:
            dist.all_gather_object(peaks, (load_rss, rss))
        if world.is_main:
            est = estimate_memory(model.args, world.size, a.batch_size, a.seq_len, a.fsdp)
            gib = 2**30
            print(
                json.dumps(
                    {
                        "ranks": world.size,
                        "threads": torch.get_num_threads(),
                        "fsdp": a.fsdp,
                        "batch": a.batch_size,
                        "seq_len": a.seq_len,
                        "steps": a.steps,
                        "sec_per_step": round(seconds / a.steps, 2),
                        "losses": [round(x, 5) for x in history],
                        "peak_rss_after_load_gib": [round(r / gib, 2) for r, _ in peaks],
                        "peak_rss_gib": [round(r / gib, 2) for _, r in peaks],
                        "estimate_gib": {"train": round(est.train / gib, 2), "load": round(est.load / gib, 2)},
                        "load_average": round(os.getloadavg()[0], 1),
                    }
                )
            )


if __name__ == "__main__":
    main()
