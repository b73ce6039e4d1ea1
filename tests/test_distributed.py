"""Rotation learning under torchrun with 2 gloo processes on a tiny model: the same rotations as one process,
FSDP sharding, a failing rank's message, and resuming after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import transformers
from safetensors import safe_open
from safetensors.torch import load_file

import spinquant
from spinquant.cli import main
from spinquant.distributed import World
from spinquant.fsdp import ShardedLoss, load_sharded
from spinquant.model import Transformer, load_transformer, tiny_model
from spinquant.quant.config import W4A4KV4, QuantConfig
from spinquant.rotation import fuse_norms, random_rotations
from spinquant.train import learn_rotations, quantized_for_training, rotation_loss, weight_clips

WORKER = Path(__file__).with_name("dist_worker.py")
STEPS = ["--steps", "4", "--batch-size", "2", "--seq-len", "32", "--checkpoint-every", "1"]


def _torchrun(tmp_path: Path, argv: list[str], **env: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 tests/dist_worker.py optimize ...` in tmp_path."""
    python_dir = str(Path(spinquant.__file__).parents[1])
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([python_dir, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    return subprocess.run(
        [*cmd, "optimize", *argv], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=180
    )


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def _info(path: Path) -> dict:
    return json.loads(_metadata(path)["info"])


@pytest.fixture(scope="module")
def reference(tiny_folder, tmp_path_factory) -> Path:
    """The rotation file of a plain 1-process run."""
    out = tmp_path_factory.mktemp("ref") / "rot.safetensors"
    main(["optimize", "--model", str(tiny_folder), *STEPS, "--out", str(out)])
    return out


def _assert_same_rotations(path: Path, reference: Path) -> None:
    got, want = load_file(str(path)), load_file(str(reference))
    torch.testing.assert_close(got["R1"], want["R1"], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["R2"], want["R2"], rtol=0, atol=1e-5)
    for key in ("loss_first", "loss_last"):
        assert _info(path)[key] == pytest.approx(_info(reference)[key], rel=1e-5)


def test_two_ranks_learn_the_rotations_of_one_process(tiny_folder, reference, tmp_path) -> None:
    argv = ["--model", str(tiny_folder), *STEPS, "--out", "rot.safetensors"]
    run = _torchrun(tmp_path, argv, SPINQUANT_TEST_REPORT=str(tmp_path / "rank"))
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_same_rotations(tmp_path / "rot.safetensors", reference)
    assert run.stdout.count("wrote rot.safetensors") == 1  # rank 0 alone writes
    ranks = [json.loads((tmp_path / f"rank.{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["rotations"] == ranks[1]["rotations"]  # every rank took bit-identical Cayley steps
    assert ranks[0]["local"] == ranks[0]["full"]  # without --fsdp every rank holds every weight


def test_fsdp_shards_weights_and_a_failed_run_resumes(tiny_folder, reference, tmp_path) -> None:
    argv = ["--model", str(tiny_folder), *STEPS, "--fsdp", "--out", "rot.safetensors"]
    failed = _torchrun(tmp_path, argv, SPINQUANT_TEST_FAIL="1:2:raise")
    assert failed.returncode != 0
    assert (
        "rank 1 of 2 failed at step 2 of 4: RuntimeError: simulated failure; the job stops on every rank; "
        "rerun the same command to resume from step 2, saved in .rot.safetensors.resume"
    ) in failed.stderr
    assert not (tmp_path / "rot.safetensors").exists()
    assert torch.load(tmp_path / ".rot.safetensors.resume", weights_only=True)["step"] == 2

    resumed = _torchrun(tmp_path, argv, SPINQUANT_TEST_REPORT=str(tmp_path / "held"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_rotations(tmp_path / "rot.safetensors", reference)
    assert _metadata(tmp_path / "rot.safetensors")["model"] == _metadata(reference)["model"]  # same identity
    held = [json.loads((tmp_path / f"held.{rank}.json").read_text()) for rank in (0, 1)]
    assert held[0]["full"] == held[1]["full"]
    assert sum(h["local"] for h in held) == held[0]["full"]  # every weight lives on exactly one rank
    assert max(h["local"] for h in held) <= held[0]["full"] // 2 + 1024
    assert held[0]["rotations"] == held[1]["rotations"]
    _assert_shards_are_rows_of(fuse_norms(load_transformer(tiny_folder)), [tmp_path / f"held.{r}.pt" for r in (0, 1)])


def _assert_shards_are_rows_of(full: Transformer, shard_files: list[Path]) -> None:
    """Each rank's loaded shards are bit-equal to consecutive rows of the fused model, and together cover it."""
    shards = [torch.load(f, weights_only=True) for f in shard_files]
    for name, param in full.named_parameters():
        rows = 0
        for start, local in (s[name] for s in shards):
            assert torch.equal(local, param.detach()[start : start + local.shape[0]]), name
            rows += local.shape[0]
        assert rows == param.shape[0], name


def test_single_process_checks() -> None:
    with pytest.raises(ValueError, match="divisible by the number of ranks"):
        World(rank=1, size=2).check_batch(3)
    assert torch.equal(World(rank=1, size=2).shard(torch.arange(6)), torch.tensor([3, 4, 5]))
    assert torch.equal(World().shard(torch.arange(3)), torch.arange(3))
    model = fuse_norms(tiny_model(seed=0))
    calib = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="torchrun"):
        learn_rotations(model, W4A4KV4, calib, steps=1, fsdp=True, progress=False)


@pytest.fixture
def one_rank_group():
    """A 1-rank gloo process group inside this test process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize(
    ("arch", "cfg", "had"),
    [
        ("llama", W4A4KV4, True),
        ("qwen2", W4A4KV4, False),
        ("llama", QuantConfig.preset("W4A4KV4", lm_head_bits=4), True),
    ],
)
def test_sharded_loss_equals_rotation_loss(one_rank_group, arch: str, cfg: QuantConfig, had: bool) -> None:
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    results = []
    for sharded in (False, True):
        model = fuse_norms(tiny_model(arch, seed=0))
        R1, R2 = (r.requires_grad_() for r in random_rotations(model.args, 1, "orthogonal"))
        with quantized_for_training(model, cfg, had):
            if sharded:
                loss_fn = ShardedLoss(model, cfg, had)
                clips = loss_fn.weight_clips(R1, R2)
                loss = loss_fn(tokens, R1, R2, clips)
            else:
                clips = weight_clips(model, cfg, R1, R2, had)
                loss = rotation_loss(model, cfg, tokens, R1, R2, had, clips)
            loss.backward()
        results.append((loss.detach(), R1.grad, R2.grad, clips))
    assert results[0][3] and results[0][3].keys() == results[1][3].keys()  # the loss clips like the evaluation
    for plain, sharded in zip(*results, strict=True):
        torch.testing.assert_close(sharded, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_shard_size", [None, "4MB"])
def test_sharded_load_equals_the_fused_model(one_rank_group, tiny_folder, tmp_path, max_shard_size) -> None:
    """One model.safetensors, or model-0000x-of-0000y.safetensors with an index (the embedding in a file of its own)."""
    folder = tiny_folder
    if max_shard_size is not None:
        folder = tmp_path / "sharded"
        hf_model = transformers.LlamaForCausalLM.from_pretrained(tiny_folder)
        hf_model.save_pretrained(folder, max_shard_size=max_shard_size)
        assert (folder / "model.safetensors.index.json").is_file()
    full = fuse_norms(load_transformer(tiny_folder))
    model = load_sharded(folder)
    assert model.norms_fused and model.identity == {**full.identity, "name": folder.name}
    torch.testing.assert_close(model.rope(8), full.rope(8), rtol=0, atol=0)
    for name, param in full.named_parameters():
        assert torch.equal(model.get_parameter(name).to_local(), param.detach()), name
    with pytest.raises(ValueError, match="fsdp=True"):
        learn_rotations(model, W4A4KV4, torch.zeros(2, 16, dtype=torch.long), steps=1, progress=False)
