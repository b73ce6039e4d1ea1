"""Data-parallel rotation learning on torch.distributed: the process group torchrun describes, batch shards,
gradient averaging, rank-0 state shared with every rank, and failures that name the rank and how to resume.

`torchrun --nproc_per_node N [--nnodes M ...] -m spinquant optimize ...` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; `process_group` initializes the backend of the device from them (gloo for CPU
tensors, NCCL for CUDA ones, each rank on GPU LOCAL_RANK; nothing happens without them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["BACKENDS", "DistributedError", "Progress", "World", "backend", "launched_by_torchrun", "process_group"]

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}  # collectives on CPU tensors: gloo; on CUDA tensors: NCCL


class DistributedError(RuntimeError):
    """A rank failed or lost its peers; the job stops and rerunning the same command resumes it."""


def launched_by_torchrun() -> bool:
    """True when torchrun (or an equivalent launcher) set the rendezvous environment."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def backend(device: str | torch.device) -> str:
    """The collective backend for tensors on `device`: gloo for "cpu", nccl for "cuda"."""
    kind = torch.device(device).type
    if kind not in BACKENDS:
        raise ValueError(f"no collective backend for device {str(device)!r}: use cpu (gloo) or cuda (nccl)")
    return BACKENDS[kind]


@contextlib.contextmanager
def process_group(timeout_s: float = 600.0, device: str | torch.device = "cpu") -> Iterator[World]:
    """The process group of a torchrun job (`backend(device)`; a collective waiting `timeout_s` for a dead peer
    fails), destroyed on exit; a single-process World when not launched by torchrun. With CUDA, each rank
    takes GPU LOCAL_RANK."""
    name = backend(device)
    if not launched_by_torchrun():
        yield World()
        return
    if name == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(name, timeout=timedelta(seconds=timeout_s))
    try:
        yield World.current()
    finally:
        dist.destroy_process_group()


@dataclasses.dataclass
class Progress:
    """Where the training loop is, for the failure message: the step running and the last step saved."""

    path: Path | None
    step: int = 0
    saved: int = 0

    def resume_hint(self) -> str:
        if self.path is None:
            return "no resume file was configured: a rerun starts from step 0"
        if self.saved == 0:
            return f"no state was saved yet: a rerun starts from step 0 (resume file {self.path})"
        return f"rerun the same command to resume from step {self.saved}, saved in {self.path}"


@dataclasses.dataclass(frozen=True)
class World:
    """This process's rank among `size` data-parallel ranks (rank 0 of 1 without a process group)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        """The global batch must split evenly, so the mean of the ranks' mean losses is the global mean."""
        if batch_size % self.size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of ranks ({self.size})")

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's consecutive slice of the global batch (dim 0)."""
        per_rank = batch.shape[0] // self.size
        return batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def average_gradients(self, params: Sequence[Tensor]) -> None:
        """Replace every param's gradient by its mean over the ranks (one flat all-reduce)."""
        if self.size == 1:
            return
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    @property
    def device(self) -> torch.device:
        """Where this rank's collectives run: its GPU under NCCL, else the CPU."""
        if self.size > 1 and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def average(self, value: float) -> float:
        """The mean of a float over the ranks (float64)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.size).item()

    def broadcast(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite each tensor with rank 0's, in place."""
        if self.size > 1:
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (e.g. the resume state, read from rank 0's disk only)."""
        if self.size == 1:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def failures(self, progress: Progress, steps: int) -> Iterator[Progress]:
        """Turn any error on a rank of a multi-rank job into a DistributedError saying what happened and how to
        resume; a single process re-raises as is."""
        try:
            yield progress
        except Exception as exc:
            if self.size == 1:
                raise
            lost = isinstance(exc, dist.DistBackendError) or any(b in str(exc).lower() for b in BACKENDS.values())
            cause = "lost contact with another rank (it died or timed out)" if lost else "failed"
            raise DistributedError(
                f"rank {self.rank} of {self.size} {cause} at step {progress.step} of {steps}: "
                f"{type(exc).__name__}: {exc}; the job stops on every rank; {progress.resume_hint()}"
            ) from exc
