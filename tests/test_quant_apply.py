"""quantize_model on a tiny model: what gets quantized, exactness of W16A16, guards."""

import pytest
import torch

from spinquant.model import tiny_model
from spinquant.quant import (
    FP,
    W4A4KV4,
    W4A16,
    ActQuantizer,
    AlreadyQuantizedError,
    KVQuantizer,
    QuantConfig,
    fake_quant_weight,
    quantize_model,
)

TOKENS = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))


def _decoder_linears(model):
    return [(n, m) for n, m in model.linears() if n != "lm_head"]


def test_full_precision_leaves_outputs_unchanged():
    model = tiny_model(seed=3)
    ref = model(TOKENS)
    quantize_model(model, FP, progress=False)
    assert torch.equal(model(TOKENS), ref)
    assert all(m.wq is None and m.act_quant is None for _, m in model.linears())


def test_w4a16_rtn_quantizes_decoder_weights_only():
    model, fresh = tiny_model(seed=3), tiny_model(seed=3)
    ref = model(TOKENS)
    cfg = QuantConfig.preset("W4A16", w_clip_search=False)
    assert quantize_model(model, cfg, progress=False) is model
    for name, module in _decoder_linears(model):
        expected = fake_quant_weight(fresh.get_submodule(name).weight.detach(), 4, 32)
        assert torch.equal(module.weight, expected) and torch.equal(module.wq.dequantize(), expected), name
        assert module.act_quant is None
    assert model.lm_head.wq is None and torch.equal(model.lm_head.weight, fresh.lm_head.weight)
    assert torch.equal(model.embed_tokens.weight, fresh.embed_tokens.weight)
    assert all(layer.self_attn.k_quant is None for layer in model.layers)
    out = model(TOKENS)
    assert 0 < (out - ref).norm() / ref.norm() < 0.4
    assert model.quant_config == cfg


def test_w4a4kv4_attaches_act_and_kv_quantizers():
    model = tiny_model(seed=4)
    ref = model(TOKENS)
    quantize_model(model, W4A4KV4, progress=False)
    for _, module in _decoder_linears(model):
        assert isinstance(module.act_quant, ActQuantizer)
        assert (module.act_quant.bits, module.act_quant.sym, module.act_quant.clip) == (4, False, 0.9)
    assert model.lm_head.act_quant is None and model.lm_head.wq is None
    for layer in model.layers:
        for q in (layer.self_attn.k_quant, layer.self_attn.v_quant):
            assert isinstance(q, KVQuantizer) and q.bits == 4 and q.group == 0
    out = model(TOKENS)
    assert torch.isfinite(out).all() and not torch.equal(out, ref)


def test_kv_quantizers_are_used_in_the_forward():
    a, b = tiny_model(seed=5), tiny_model(seed=5)
    quantize_model(a, QuantConfig(kv_bits=2), progress=False)
    assert not torch.equal(a(TOKENS), b(TOKENS))
    quantize_model(b, QuantConfig(a_bits=16, kv_bits=16), progress=False)
    assert torch.equal(tiny_model(seed=5)(TOKENS), b(TOKENS))


def test_lm_head_quantized_on_request():
    model = tiny_model(seed=6)
    quantize_model(model, QuantConfig(w_bits=4, w_group=32, a_bits=8, lm_head_bits=4), progress=False)
    assert model.lm_head.wq is not None and model.lm_head.act_quant is not None
    assert torch.equal(model.lm_head.weight, model.lm_head.wq.dequantize())


def test_gptq_needs_calibration_and_runs_with_it():
    cfg = QuantConfig.preset("W4A4KV4", w_method="gptq")
    with pytest.raises(ValueError, match="needs calibration data: pass calib_tokens"):
        quantize_model(tiny_model(), cfg, progress=False)
    model = tiny_model()
    quantize_model(model, cfg, calib_tokens=TOKENS, progress=False)
    assert all(m.wq is not None and m.act_quant is not None for _, m in _decoder_linears(model))
    assert torch.isfinite(model(TOKENS)).all()


@pytest.mark.parametrize("second", [W4A16, FP, QuantConfig(kv_bits=8)])
def test_quantizing_twice_raises(second):
    model = quantize_model(tiny_model(), W4A4KV4, progress=False)
    with pytest.raises(AlreadyQuantizedError, match="already quantized"):
        quantize_model(model, second, progress=False)
