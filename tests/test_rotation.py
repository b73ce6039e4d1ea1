"""Fusing norms and merging R1/R2 (and R3/R4 online Hadamards) leaves fp32 outputs unchanged."""

import pytest
import torch

from spinquant.model import tiny_model
from spinquant.rotation import apply_rotations, fuse_norms, random_rotations

ARCHS = [("llama", {}), ("qwen2", {}), ("llama", {"tie_word_embeddings": True}), ("mistral", {"sliding_window": 8})]


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize(("arch", "extra"), ARCHS)
@pytest.mark.parametrize("had", [False, True])
@pytest.mark.parametrize("kind", ["hadamard", "orthogonal"])
def test_rotated_model_is_equivalent(arch, extra, had, kind):
    model = tiny_model(arch, seed=1, **extra)
    tokens = torch.randint(0, model.args.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = logits(model, tokens)
    fuse_norms(model)
    assert torch.allclose(logits(model, tokens), expected, atol=1e-5)
    R1, R2 = random_rotations(model.args, seed=3, kind=kind)
    apply_rotations(model, R1, R2, had=had)
    got = logits(model, tokens)
    assert (got - expected).abs().max() < 1e-4
    # The rotation really changed the weights (the test could fail).
    assert not torch.allclose(model.embed_tokens.weight, tiny_model(arch, seed=1, **extra).embed_tokens.weight)


def test_rotation_without_fusion_is_refused():
    model = tiny_model()
    R1, R2 = random_rotations(model.args, seed=0)
    with pytest.raises(RuntimeError, match="fuse the RMSNorm"):
        apply_rotations(model, R1, R2, had=False)


def test_double_rotation_is_refused():
    model = fuse_norms(tiny_model())
    R1, R2 = random_rotations(model.args, seed=0)
    apply_rotations(model, R1, R2, had=False)
    with pytest.raises(RuntimeError, match="already has rotations"):
        apply_rotations(model, R1, R2, had=False)


def test_random_rotations_are_seeded_and_orthonormal():
    args = tiny_model().args
    R1a, R2a = random_rotations(args, seed=5)
    R1b, R2b = random_rotations(args, seed=5)
    assert torch.equal(R1a, R1b) and torch.equal(R2a, R2b)
    eye = torch.eye(args.dim, dtype=R1a.dtype)
    assert (R1a.T @ R1a - eye).abs().max() < 1e-12
    assert not torch.equal(R1a, random_rotations(args, seed=6)[0])
    with pytest.raises(ValueError, match="unknown rotation kind"):
        random_rotations(args, seed=0, kind="givens")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_online_hadamards_alone_are_equivalent(arch):
    model = tiny_model(arch, seed=4)
    tokens = torch.randint(0, model.args.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    expected = logits(model, tokens)
    apply_rotations(fuse_norms(model), None, None, had=True)
    assert model.layers[0].mlp.down_proj.online_had and model.layers[0].self_attn.r3
    assert (logits(model, tokens) - expected).abs().max() < 1e-4
