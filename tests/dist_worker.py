"""torchrun entry point of test_distributed.py: `spinquant <argv>` with two test hooks from the environment.

SPINQUANT_TEST_FAIL="RANK:STEP:raise|exit": that rank raises (or dies, os._exit) in step STEP (0-based) of this run.
SPINQUANT_TEST_REPORT=PREFIX: each rank writes PREFIX.RANK.json: the model weights it holds and its learned rotations,
and with --fsdp PREFIX.RANK.pt: {name: (first row, local shard)} of the model as loaded.
"""

from __future__ import annotations

import json
import os
import sys

import torch

import spinquant.train as train
from spinquant.cli import main
from spinquant.distributed import World


def _fail_at(rank: int, step: int, how: str) -> None:
    real_average = World.average_gradients
    calls = {"n": 0}

    def failing(self, params):
        if calls["n"] == step and self.rank == rank:
            if how == "exit":
                os._exit(3)
            raise RuntimeError("simulated failure")
        calls["n"] += 1
        return real_average(self, params)

    World.average_gradients = failing


def _report_to(prefix: str) -> None:
    real_learn = train.learn_rotations

    def learn_and_report(model, *args, **kwargs):
        rank = os.environ["RANK"]
        if kwargs.get("fsdp"):  # model loaded sharded: this rank's rows of every weight, by first row
            shards = {n: (p.__create_chunk_list__()[0].offsets[0], p.to_local()) for n, p in model.named_parameters()}
            torch.save(shards, f"{prefix}.{rank}.pt")
        result = real_learn(model, *args, **kwargs)
        local = {n: (p.to_local() if hasattr(p, "to_local") else p).numel() for n, p in model.named_parameters()}
        full = {n: p.numel() for n, p in model.named_parameters()}
        with open(f"{prefix}.{rank}.json", "w") as f:
            R1, R2, _ = result
            rotations = torch.cat([R1.flatten(), R2.flatten()]).tolist()
            json.dump({"local": sum(local.values()), "full": sum(full.values()), "rotations": rotations}, f)
        return result

    train.learn_rotations = learn_and_report


if __name__ == "__main__":
    torch.set_num_threads(1)
    if os.environ.get("SPINQUANT_TEST_FAIL"):
        rank, step, how = os.environ["SPINQUANT_TEST_FAIL"].split(":")
        _fail_at(int(rank), int(step), how)
    if os.environ.get("SPINQUANT_TEST_REPORT"):
        _report_to(os.environ["SPINQUANT_TEST_REPORT"])
    main(sys.argv[1:])
