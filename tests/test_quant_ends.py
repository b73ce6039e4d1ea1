"""The 8-bit ends (quant.ends): one shared table for a tied model after norm fusion and rotation, separate tables
otherwise, the int8 storage convention, idempotence, and a checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from spinquant.checkpoint import load_quantized, save_quantized
from spinquant.export.cli import prepare_model
from spinquant.model import tiny_model
from spinquant.quant.config import QuantConfig
from spinquant.quant.ends import head_from_table, quantize_ends

ENDS8 = QuantConfig(w_bits=4, w_group=32, a_bits=8, embed_bits=8, lm_head_bits=8)


def _tied(seed: int = 1):
    return tiny_model(seed=seed, tie_word_embeddings=True)


def test_tied_model_keeps_one_table_after_fusion_and_rotation():
    ref = prepare_model(_tied(), QuantConfig(w_bits=4, w_group=32, a_bits=8, lm_head_bits=16), had=False, seed=0)
    model = prepare_model(_tied(), ENDS8, had=False, seed=0)
    embed, head = model.embed_tokens, model.lm_head
    assert embed.wq is head.wq and head.pre is not None and head.pre.shape == (model.args.dim,) * 2
    codes = embed.wq.codes.int() - 128
    assert embed.wq.bits == 8 and codes.abs().max() <= 127 and embed.wq.scales.shape[1] == 1
    assert torch.equal(embed.weight, head.weight)
    tokens = torch.randint(0, model.args.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(tokens), model(tokens)
    assert (a - b).norm() / a.norm() < 0.05  # 8-bit ends cost little


def test_pre_carries_the_final_norm_scale():
    model = _tied(seed=2)
    g = model.norm.weight.detach().clone()
    prepare_model(model, ENDS8, had=False, seed=0)
    # Without R1 the matrix would be diag(g); with R1 it is R1^T diag(g) R1: symmetric, eigenvalues g.
    eig = torch.linalg.eigvalsh(model.lm_head.pre.double())
    torch.testing.assert_close(eig, torch.sort(g.double()).values, atol=1e-4, rtol=1e-4)


def test_untied_model_gets_two_tables():
    model = prepare_model(tiny_model(seed=1), ENDS8, had=False, seed=0)
    assert model.embed_tokens.wq is not model.lm_head.wq and model.lm_head.pre is None
    assert model.lm_head.act_quant.bits == 8 and not model.lm_head.act_quant.sym


def test_head_from_table_rejects_an_unrelated_head():
    g = torch.Generator().manual_seed(0)
    e, x = torch.randn(300, 16, generator=g), torch.randn(16, 16, generator=g)
    torch.testing.assert_close(head_from_table(e, e @ x), x.T, atol=1e-4, rtol=1e-4)
    assert head_from_table(e, torch.randn(300, 16, generator=g)) is None


def test_quantize_ends_is_idempotent_and_survives_a_checkpoint(tmp_path):
    model = prepare_model(_tied(), ENDS8, had=False, seed=0)
    codes, pre = model.embed_tokens.wq.codes.clone(), model.lm_head.pre.clone()
    quantize_ends(model, ENDS8)
    assert torch.equal(model.embed_tokens.wq.codes, codes)
    torch.testing.assert_close(model.lm_head.pre, pre, atol=1e-5, rtol=1e-5)
    path = save_quantized(tmp_path / "q.safetensors", model, ENDS8, had=False)
    loaded, cfg, _, _ = load_quantized(path)
    assert cfg == ENDS8 and loaded.embed_tokens.wq is loaded.lm_head.wq
    assert torch.equal(loaded.embed_tokens.wq.codes, codes)
    tokens = torch.randint(0, model.args.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bits", [(8, 16), (16, 8), (8, 4)])
def test_one_end_alone(bits):
    embed_bits, head_bits = bits
    cfg = QuantConfig(w_bits=4, w_group=32, a_bits=8, embed_bits=embed_bits, lm_head_bits=head_bits)
    model = prepare_model(_tied(), cfg, had=False, seed=0)
    assert (getattr(model.embed_tokens, "wq", None) is not None) == (embed_bits == 8)
    assert model.lm_head.wq is None if head_bits == 16 else model.lm_head.wq.bits == head_bits
