"""GPTQ: reduces to RTN without input correlations, beats RTN with them; model-level walk on a tiny model."""

import pytest
import torch

from spinquant.model import tiny_model
from spinquant.quant import QuantConfig, gptq_quantize, gptq_quantize_model, quantize_weight_rtn
from spinquant.quant.gptq import HessianAccumulator, _upper_inverse_cholesky


def correlated_inputs(n, k, seed):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=gen) / k**0.5 + torch.eye(k)
    scale = torch.logspace(0, 1, k)[torch.randperm(k, generator=gen)]  # uneven channel magnitudes
    return (torch.randn(n, k, generator=gen) @ mix) * scale


def hessian(x):
    return 2 * x.T @ x / x.shape[0]


def test_hessian_accumulator_matches_formula():
    x = correlated_inputs(100, 8, 0)
    acc = HessianAccumulator(8)
    acc.add(x[:30].reshape(3, 10, 8))
    acc.add(x[30:])
    torch.testing.assert_close(acc.hessian(), hessian(x))
    with pytest.raises(ValueError, match="no calibration inputs"):
        HessianAccumulator(4).hessian()


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize(("group", "clip"), [(0, False), (16, False), (16, True)])
def test_diagonal_hessian_reduces_to_rtn(group, clip, act_order):
    w = torch.randn(12, 48, generator=torch.Generator().manual_seed(1))
    h = torch.diag(torch.rand(48, generator=torch.Generator().manual_seed(2)) + 0.5)
    qw = gptq_quantize(w, h, 4, group, True, clip, act_order=act_order)
    rtn = quantize_weight_rtn(w, 4, group, True, clip)
    assert torch.equal(qw.codes, rtn.codes) and torch.equal(qw.scales, rtn.scales)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(
    ("group", "act_order", "block"), [(0, False, 128), (16, False, 32), (16, True, 24), (24, False, 40)]
)
def test_gptq_beats_rtn_on_output_error(sym, group, act_order, block):
    x = correlated_inputs(512, 64, 3)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    qw = gptq_quantize(w, hessian(x), 4, group, sym, clip_search=False, block=block, act_order=act_order)
    rtn = quantize_weight_rtn(w, 4, group, sym, clip_search=False)
    ref = x @ w.T
    err_gptq = (x @ qw.dequantize().T - ref).square().mean()
    err_rtn = (x @ rtn.dequantize().T - ref).square().mean()
    assert err_gptq < 0.8 * err_rtn
    assert qw.group == (group or 64) and qw.scales.shape == rtn.scales.shape and (qw.zeros is None) == sym


def test_dead_columns_quantize_to_zero():
    x = correlated_inputs(256, 16, 5)
    x[:, 3] = 0
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(6))
    qw = gptq_quantize(w, hessian(x), 4, 8)
    assert torch.equal(qw.dequantize()[:, 3], torch.zeros(4))
    assert torch.isfinite(qw.dequantize()).all()


def test_bad_hessian_shape():
    with pytest.raises(ValueError, match="does not match"):
        gptq_quantize(torch.randn(4, 8), torch.eye(6), 4)


def _calib(model, seed=0):
    return torch.randint(0, model.args.vocab_size, (6, 24), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("lm_head", [False, True])
def test_gptq_model_quantizes_every_linear(lm_head):
    model = tiny_model(seed=1)
    head_before = model.lm_head.weight.detach().clone()
    tokens = _calib(model)
    ref = model(tokens)
    cfg = QuantConfig(w_bits=4, w_group=32, w_method="gptq", lm_head_bits=4 if lm_head else 16)
    gptq_quantize_model(model, cfg, tokens, progress=False, batch_size=4)
    for name, module in model.linears():
        if name == "lm_head" and not lm_head:
            assert module.wq is None and torch.equal(module.weight, head_before)
            continue
        assert module.wq is not None, name
        assert torch.equal(module.weight, module.wq.dequantize()), name
        assert module.wq.group == 32
    out = model(tokens)
    assert torch.isfinite(out).all()
    rel = (out - ref).norm() / ref.norm()
    assert 0 < rel < 0.3


def _reference_gptq_model(model, cfg, tokens):
    """The plain true-sequential loop: every stage's inputs come from re-running the whole block up to it."""
    from spinquant.quant.gptq import STAGES, HessianAccumulator, _quantize_stage

    class Stop(Exception):
        pass

    with torch.no_grad():
        rope, hidden = model.rope(tokens.shape[1]), [model.embed_tokens(tokens)]
        for block in model.layers:
            for names in STAGES:
                modules = [block.get_submodule(n) for n in names]
                acc = HessianAccumulator(modules[0].in_features)

                def hook(mod, args, acc=acc):
                    acc.add(mod.prepare_input(args[0]))
                    raise Stop

                handle = modules[0].register_forward_pre_hook(hook)
                for x in hidden:
                    with pytest.raises(Stop):
                        block(x, rope)
                handle.remove()
                _quantize_stage(modules, acc.hessian(), cfg)
            hidden = [block(x, rope) for x in hidden]


def test_gptq_model_runs_each_sublayer_once_with_the_same_result_as_rerunning_the_block():
    from spinquant.rotation import apply_rotations, fuse_norms, random_rotations

    cfg = QuantConfig(w_bits=4, w_group=16, w_method="gptq")
    models = [fuse_norms(tiny_model(seed=3)) for _ in range(2)]
    for m in models:
        apply_rotations(m, *random_rotations(m.args, 0), had=True)  # R4: down_proj's prepare_input has a Hadamard
    tokens = _calib(models[0], 4)
    gptq_quantize_model(models[0], cfg, tokens, progress=False, batch_size=6)
    _reference_gptq_model(models[1], cfg, tokens)
    for (name, a), (_, b) in zip(models[0].linears(), models[1].linears(), strict=True):
        if a.wq is not None or b.wq is not None:
            assert torch.equal(a.wq.codes, b.wq.codes) and torch.equal(a.wq.scales, b.wq.scales), name


def test_gptq_model_beats_rtn_on_block_outputs():
    """Calibrated on the same tokens, GPTQ's first block reproduces the float block better than RTN."""
    cfg = QuantConfig(w_bits=3, w_group=32, w_clip_search=False, w_method="gptq")
    tokens = _calib(tiny_model(seed=2), 3)
    models = {m: tiny_model(seed=2) for m in ("float", "gptq", "rtn")}
    gptq_quantize_model(models["gptq"], cfg, tokens, progress=False)
    for _, module in models["rtn"].linears():
        if module is not models["rtn"].lm_head:
            module.weight.data = quantize_weight_rtn(module.weight, 3, 32, True, False).dequantize()
    outs = {}
    for key, m in models.items():
        with torch.no_grad():
            x = m.embed_tokens(tokens)
            outs[key] = m.layers[0](x, m.rope(tokens.shape[1]))
    assert (outs["gptq"] - outs["float"]).norm() < 0.9 * (outs["rtn"] - outs["float"]).norm()


def test_bad_calibration_tokens():
    model = tiny_model()
    cfg = QuantConfig(w_bits=4, w_method="gptq")
    with pytest.raises(ValueError, match="LongTensor"):
        gptq_quantize_model(model, cfg, torch.zeros(2, 8), progress=False)
    with pytest.raises(ValueError, match=r"ids in \[0, 256\)"):
        gptq_quantize_model(model, cfg, torch.full((2, 8), 999), progress=False)


def test_upper_inverse_cholesky():
    h = hessian(correlated_inputs(200, 24, 7)).double()
    u = _upper_inverse_cholesky(h, 0.01)
    assert torch.equal(u, u.triu()) and (u.diagonal() > 0).all()
    damped = h + 0.01 * h.diagonal().mean() * torch.eye(24, dtype=torch.float64)
    torch.testing.assert_close(u.T @ u, torch.linalg.inv(damped))


def test_bf16_calibration_forward_stays_close_to_fp32():
    """gptq_dtype="bf16" (the official code's GPTQ runs its model in bf16) runs the calibration forward's matmuls in
    bf16 and keeps the Hessians and the solve in fp32: it changes a few codes, and the model's outputs little."""
    tokens = _calib(tiny_model(seed=5), 5)
    models = {dtype: tiny_model(seed=5) for dtype in ("fp32", "bf16")}
    for dtype, model in models.items():
        cfg = QuantConfig(w_bits=4, w_group=32, w_method="gptq", gptq_dtype=dtype)
        gptq_quantize_model(model, cfg, tokens, progress=False)
    linears = zip(models["fp32"].linears(), models["bf16"].linears(), strict=True)
    pairs = [(a.wq.codes, b.wq.codes) for (_, a), (_, b) in linears if a.wq is not None]
    changed = sum(int((a != b).sum()) for a, b in pairs) / sum(a.numel() for a, _ in pairs)
    assert 0 < changed < 0.1  # bf16 was in effect, and moved few codes
    with torch.no_grad():
        out = {dtype: model(tokens) for dtype, model in models.items()}
    assert (out["bf16"] - out["fp32"]).norm() < 0.1 * out["fp32"].norm()
    with pytest.raises(ValueError, match="gptq_dtype='fp16'"):
        QuantConfig(gptq_dtype="fp16")
