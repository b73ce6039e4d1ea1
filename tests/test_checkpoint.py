"""Rotation files and int4 checkpoints: round trips, atomic writes, and refusal of foreign or corrupt files."""

import pytest
import torch

from spinquant.checkpoint import (
    IncompatibleFileError,
    load_quantized,
    load_rotations,
    save_quantized,
    save_rotations,
)
from spinquant.model import tiny_model
from spinquant.quant.apply import quantize_model
from spinquant.quant.config import QuantConfig
from spinquant.rotation import apply_rotations, fuse_norms, random_rotations


def test_rotation_file_round_trip(tmp_path):
    model = tiny_model()
    R1, R2 = random_rotations(model.args, seed=0)
    path = save_rotations(tmp_path / "rot.safetensors", model, R1, R2, {"steps": 3})
    R1b, R2b, info = load_rotations(path, tiny_model())
    assert torch.equal(R1b, R1) and torch.equal(R2b, R2)
    assert info == {"steps": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["rot.safetensors"]  # no temp file left behind


def test_rotation_file_for_another_model_is_refused(tmp_path):
    model = tiny_model(seed=0)
    R1, R2 = random_rotations(model.args, seed=0)
    path = save_rotations(tmp_path / "rot.safetensors", model, R1, R2, {})
    with pytest.raises(IncompatibleFileError, match="was made for model"):
        load_rotations(path, tiny_model(seed=1))
    with pytest.raises(IncompatibleFileError, match="was made for model"):
        load_rotations(path, tiny_model(seed=0, dim=32, n_heads=2, n_kv_heads=1))


def test_corrupt_or_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(IncompatibleFileError, match="not a readable safetensors"):
        load_rotations(bad, tiny_model())
    with pytest.raises(FileNotFoundError):
        load_rotations(tmp_path / "missing.safetensors", tiny_model())
    model = tiny_model()
    rot = save_rotations(tmp_path / "rot.safetensors", model, *random_rotations(model.args, seed=0), {})
    with pytest.raises(IncompatibleFileError, match="expected 'spinquant-int4-v1'"):
        load_quantized(rot)


@pytest.mark.parametrize("preset", ["W4A16", "W4A4KV4"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_quantized_checkpoint_reproduces_the_model(tmp_path, preset, arch):
    model = fuse_norms(tiny_model(arch))
    R1, R2 = random_rotations(model.args, seed=2)
    apply_rotations(model, R1, R2, had=True)
    cfg = QuantConfig.preset(preset)
    quantize_model(model, cfg, progress=False)
    path = save_quantized(tmp_path / "q.safetensors", model, cfg, True, R1, R2)
    loaded, cfg2, had, packed = load_quantized(path)
    assert cfg2 == cfg and had
    assert packed["layers.0.mlp.down_proj"]["qweight"].dtype == torch.uint8
    tokens = torch.randint(0, model.args.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.allclose(loaded(tokens), model(tokens), atol=1e-5)
    for (name, a), (_, b) in zip(model.linears(), loaded.linears(), strict=True):
        assert (a.wq is None) == (b.wq is None), name
        if a.wq is not None:
            assert torch.equal(a.wq.codes, b.wq.codes) and torch.equal(a.wq.scales, b.wq.scales)


@pytest.mark.slow
@pytest.mark.parametrize("had", [True, False], ids=["had", "no_had"])
def test_the_shipped_rotations_belong_to_the_default_model(had):
    """The package's paper-scale rotations: found by the main job for the default model (official recipe, had
    and no_had), learned at the paper's budget with their provenance, and refused for another model."""
    from spinquant.model import load_model
    from spinquant.rotation.shipped import find_shipped, shipped_names, shipped_path

    name = f"smollm2-135m-official-{'had' if had else 'no_had'}"
    assert name in shipped_names()
    base, _ = load_model()
    assert find_shipped(base.identity["fingerprint"], "official", had=had) == name
    _, _, info = load_rotations(shipped_path(name), base)
    assert (info["steps"], info["batch_size"], info["seq_len"], info["grad_clip"], info["had"]) == (
        100,
        8,
        2048,
        1.0,
        had,
    )
    assert len(info["losses"]) == 100 and {"command", "commit", "date", "heldout_loss"} <= set(info)
    with pytest.raises(IncompatibleFileError, match="was made for model"):
        load_rotations(shipped_path(name), tiny_model())
