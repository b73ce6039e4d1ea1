"""The named recipes: settings as the official code / our kernels have them, and what depends on them."""

from __future__ import annotations

import pytest
import torch

from spinquant.model import ModelArgs, Transformer
from spinquant.quant.apply import quantize_model
from spinquant.quant.config import QuantConfig
from spinquant.quant.quantizer import ActQuantizer, search_clip
from spinquant.recipes import RECIPES, WEIGHT_FIELDS, Recipe, recipe


def test_official_recipe_has_the_official_settings():
    r = recipe("official")
    cfg = r.config("w4a4kv4")
    assert (cfg.w_bits, cfg.w_group, cfg.w_sym, cfg.w_clip_norm, cfg.w_method) == (4, 0, True, 2.4, "gptq")
    assert (cfg.a_bits, cfg.a_sym, cfg.act_clip, cfg.o_proj_per_head) == (4, False, 1.0, True)
    assert (cfg.kv_bits, cfg.kv_group, cfg.kv_sym, cfg.lm_head_bits, cfg.embed_bits) == (4, 0, False, 16, 16)
    assert r.learn.name == "W16A4KV4" and r.learn.o_proj_per_head
    budget = (r.train.steps, r.train.batch_size, r.train.seq_len, r.train.lr, r.train.grad_clip)
    assert budget == (100, 8, 2048, 1.5, 1.0)
    assert r.train.tokens == 1_638_400 and (r.gptq_samples, r.gptq_seq_len) == (128, 2048)


def test_device_recipe_is_what_the_kernels_compute():
    cfg = recipe("device").config("W4A8KV8")
    assert (cfg.w_bits, cfg.w_group, cfg.w_sym, cfg.a_bits, cfg.kv_bits) == (4, 32, True, 8, 8)
    assert not cfg.o_proj_per_head and (cfg.embed_bits, cfg.lm_head_bits) == (8, 8) and cfg.w_clip_norm == 2


def test_recipes_quantize_weights_alike_at_every_precision_and_refuse_unknown_names():
    for r in RECIPES.values():
        assert len({tuple(getattr(c, f) for f in WEIGHT_FIELDS) for c in r.precisions.values()}) == 1
    official = recipe("official")
    with pytest.raises(ValueError, match="every precision must quantize the weights alike"):
        Recipe("x", "", official.learn, {"A": QuantConfig(w_bits=4), "B": QuantConfig(w_bits=3)}, official.train, 1, 1)
    with pytest.raises(ValueError, match="unknown recipe 'paper'"):
        recipe("paper")
    with pytest.raises(ValueError, match="has no precision 'W2A2'"):
        official.config("W2A2")


def test_o_proj_per_head_quantizes_its_input_per_head():
    args = ModelArgs("llama", vocab_size=50, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8, hidden_dim=48)
    model = quantize_model(Transformer(args), QuantConfig(a_bits=4, o_proj_per_head=True))
    layer = model.layers[0]
    assert layer.self_attn.o_proj.act_quant.group == 8 and layer.self_attn.q_proj.act_quant.group == 0
    x = torch.zeros(1, 2, 32)
    x[..., :8] = torch.linspace(-100, 100, 8)  # one head with outliers
    x[..., 8:] = torch.linspace(-1, 1, 24)
    per_head = layer.self_attn.o_proj.act_quant(x)
    per_token = ActQuantizer(4, clip=1.0)(x)
    assert (per_head[..., 8:] - x[..., 8:]).abs().max() < (per_token[..., 8:] - x[..., 8:]).abs().max()


def test_clip_search_norm_changes_which_error_is_minimised():
    torch.manual_seed(0)
    w = torch.randn(64, 32) * torch.linspace(0.2, 3, 32)
    w[:, 0] *= 6
    c2, c24 = search_clip(w, 4, True, norm=2.0), search_clip(w, 4, True, norm=2.4)
    assert c2.shape == c24.shape == (64, 1)
    assert (c24 >= c2).float().mean() > 0.5  # a larger p punishes the clipped outliers more: clip less
    with pytest.raises(ValueError, match="w_clip_norm"):
        QuantConfig(w_bits=4, w_clip_norm=0.5)
