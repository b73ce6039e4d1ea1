"""The memory estimate: parameter counts of the public shapes, activation counts against autograd's saved tensors."""

from __future__ import annotations

import pytest
import torch

from spinquant.cli import main
from spinquant.memory import act_floats, estimate_memory, n_params, public_shapes
from spinquant.model import tiny_model
from spinquant.quant.config import W4A4KV4
from spinquant.rotation import fuse_norms, random_rotations
from spinquant.train import quantized_for_training, rotation_loss


def test_parameter_counts_of_public_shapes() -> None:
    shapes = public_shapes()
    assert n_params(shapes["Llama-3-8B"]) == 8_030_261_248
    assert n_params(shapes["Llama-3-70B"]) == 70_553_706_496
    assert n_params(shapes["Llama-3.2-1B"]) == 1_235_814_400 + 128256 * 2048  # tied lm_head is cloned


def _saved_bytes(model, tokens: torch.Tensor) -> int:
    """Bytes autograd saves for backward in `rotation_loss`, parameters excluded (each storage once)."""
    R1, R2 = random_rotations(model.args, 0)
    R1.requires_grad_()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with quantized_for_training(model, W4A4KV4, True), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        rotation_loss(model, W4A4KV4, tokens, R1, R2.requires_grad_(), True)
    return sum(seen.values())


@pytest.mark.parametrize("shape", [{}, {"dim": 128}, {"hidden_dim": 192}, {"n_layers": 4}, {"n_heads": 8}])
def test_activation_count_matches_what_autograd_saves(shape: dict) -> None:
    model = fuse_norms(tiny_model(seed=0, **shape))
    a = model.args
    gen = torch.Generator().manual_seed(0)
    small, large = (torch.randint(0, a.vocab_size, (b, 64), generator=gen) for b in (1, 3))
    per_token = (_saved_bytes(model, large) - _saved_bytes(model, small)) / (2 * 64)
    expected = 4 * (a.n_layers * act_floats(a) + 2 * a.dim + a.vocab_size)  # + the saved log-softmax
    assert per_token == pytest.approx(expected, rel=0.03)


def test_estimate_shrinks_with_ranks_and_fsdp(capsys) -> None:
    args = public_shapes()["Llama-3-8B"]
    one, two, eight = (estimate_memory(args, n, 8, 2048, fsdp=False) for n in (1, 2, 8))
    assert one.train > two.train > eight.train and one.frozen == eight.frozen
    sharded = estimate_memory(args, 8, 8, 2048, fsdp=True)
    assert sharded.frozen < one.frozen / 2 and sharded.train < eight.train
    assert sharded.load < eight.load / 6  # --fsdp loads 1/8 of the weights (and rows of the largest tensor)
    with pytest.raises(ValueError, match="divisible"):
        estimate_memory(args, 3, 8, 2048, fsdp=False)
    main(["memory", "--models", "Llama-3-8B,Llama-3-70B", "--ranks", "1,8"])
    out = capsys.readouterr().out
    assert out.count("| Llama-3-") == 4 and "global batch 8 x 2048" in out
    with pytest.raises(SystemExit):
        main(["memory", "--models", "Llama-4-1T"])
    assert "neither a shape of Llama-3.2-1B" in capsys.readouterr().err
