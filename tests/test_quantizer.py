"""Fake quantizers: the shared conventions on hand-computed cases, against a per-group loop reference,
fp16 scales, clip search, straight-through gradients."""

import math

import pytest
import torch

from spinquant.quant import ActQuantizer, KVQuantizer, QuantizedWeight, fake_quant, fake_quant_weight
from spinquant.quant.quantizer import quantize_weight_rtn


def reference_fake_quant(x, bits, sym, group, clip=1.0, fp16=False):
    """Plain per-row, per-group loop over the documented formulas, in float32 like the kernels."""
    out = torch.empty_like(x)
    rows = x.reshape(-1, x.shape[-1])
    k = rows.shape[1]
    group = k if group <= 0 else group
    for r in range(rows.shape[0]):
        for start in range(0, k, group):
            g = rows[r, start : start + group]
            if sym:
                scale = g.abs().max() * clip / (2 ** (bits - 1) - 1)
            else:
                xmax = torch.clamp(g.max(), min=0.0) * clip
                xmin = torch.clamp(g.min(), max=0.0) * clip
                scale = (xmax - xmin) / (2**bits - 1)
            if fp16:
                scale = scale.half().float()
            if scale == 0:
                scale = torch.tensor(1.0)
            if sym:
                q = torch.clamp(torch.round(g / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
                val = q * scale
            else:
                zero = torch.round(-xmin / scale)
                q = torch.clamp(torch.round(g / scale) + zero, 0, 2**bits - 1)
                val = (q - zero) * scale
            out.view(-1, k)[r, start : start + group] = val
    return out


def test_asymmetric_hand_case_rounds_half_to_even():
    x = torch.tensor([[-1.0, 0.5, 2.0, 1.5]])
    # xmax 2, xmin -1, scale 1, zero 1: q = round([-1, .5, 2, 1.5]) + 1 = [0, 1, 3, 3] -> [-1, 0, 2, 2]
    assert torch.equal(fake_quant(x, 2, sym=False), torch.tensor([[-1.0, 0.0, 2.0, 2.0]]))


def test_asymmetric_clip_and_positive_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # xmin = 0 -> zero 0; clip 0.75 -> xmax 3, scale 1 at 2 bits
    assert torch.equal(fake_quant(x, 2, sym=False, clip=0.75), torch.tensor([[1.0, 2.0, 3.0, 3.0]]))


def test_symmetric_hand_case_codes_and_values():
    w = torch.tensor([[3.0, -6.0, 5.0, 0.0, -4.5]])  # 3 bits: scale 6 / 3 = 2 (exact in fp16)
    qw = quantize_weight_rtn(w, bits=3, group=0, sym=True, clip_search=False)
    # q = round([1.5, -3, 2.5, 0, -2.25]) = [2, -3, 2, 0, -2]; codes q + 4
    assert qw.codes.tolist() == [[6, 1, 6, 4, 2]]
    assert qw.scales.tolist() == [[2.0]] and qw.zeros is None and qw.group == 5
    assert torch.equal(qw.dequantize(), torch.tensor([[4.0, -6.0, 4.0, 0.0, -4.0]]))


def test_zero_group_gets_unit_scale():
    w = torch.zeros(2, 8)
    for sym in (True, False):
        qw = quantize_weight_rtn(w, 4, 4, sym, clip_search=False)
        assert torch.equal(qw.scales, torch.ones(2, 2, dtype=torch.float16))
        assert torch.equal(qw.dequantize(), w)
    assert torch.equal(fake_quant(torch.zeros(3, 5), 4, sym=False), torch.zeros(3, 5))


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(("bits", "group", "k"), [(4, 4, 16), (3, 4, 10), (8, 0, 7), (2, 3, 8), (4, 64, 20)])
def test_matches_loop_reference(sym, bits, group, k):
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(k + bits)) * 3
    for fp16 in (False, True):
        expected = reference_fake_quant(x, bits, sym, group if group < k else 0, clip=0.9, fp16=fp16)
        assert torch.equal(fake_quant(x, bits, sym, group, clip=0.9, fp16_scale=fp16), expected)


@pytest.mark.parametrize("sym", [True, False])
def test_weight_codes_round_trip_to_fake_quant_with_fp16_scales(sym):
    w = torch.randn(6, 70, generator=torch.Generator().manual_seed(1)) * 0.05
    qw = quantize_weight_rtn(w, 4, 32, sym, clip_search=False)
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= 15
    assert qw.scales.dtype == torch.float16 and qw.scales.shape == (6, 3)
    assert (qw.zeros is None) == sym
    assert torch.equal(qw.dequantize(), fake_quant_weight(w, 4, 32, sym))
    assert torch.equal(qw.dequantize(), reference_fake_quant(w, 4, sym, 32, fp16=True))
    # the fp16 rounding of the scale matters: without it the values differ
    assert not torch.equal(fake_quant_weight(w, 4, 32, sym, fp16_scale=False), qw.dequantize())


def test_error_decreases_with_bits_and_groups():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    errs = [(fake_quant_weight(w, b, 32) - w).square().mean().item() for b in range(2, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False))
    per_channel = (fake_quant_weight(w, 4, 0) - w).square().mean()
    grouped = (fake_quant_weight(w, 4, 32) - w).square().mean()
    assert grouped < per_channel


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [0, 16])
def test_clip_search_never_worse_per_group(sym, group):
    gen = torch.Generator().manual_seed(3)
    w = torch.distributions.StudentT(3.0).sample((32, 64)) + 0.01 * torch.randn(32, 64, generator=gen)
    plain = quantize_weight_rtn(w, 4, group, sym, clip_search=False).dequantize()
    searched_qw = quantize_weight_rtn(w, 4, group, sym, clip_search=True)
    searched = searched_qw.dequantize()
    g = group or 64
    err_plain = (plain - w).square().reshape(32, -1, g).sum(-1)
    err_search = (searched - w).square().reshape(32, -1, g).sum(-1)
    assert (err_search <= err_plain).all()
    assert err_search.sum() < 0.98 * err_plain.sum()
    assert searched_qw.scales.dtype == torch.float16


def test_quantized_weight_validates():
    codes = torch.zeros(2, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="scales must be float16"):
        QuantizedWeight(codes, torch.ones(2, 2), None, 4, 4, True)
    with pytest.raises(ValueError, match="zeros must be None"):
        QuantizedWeight(codes, torch.ones(2, 2, dtype=torch.float16), None, 4, 4, False)
    with pytest.raises(ValueError, match="codes must be a 2-D uint8"):
        QuantizedWeight(codes.int(), torch.ones(2, 2, dtype=torch.float16), None, 4, 4, True)


@pytest.mark.parametrize("bits", [1, 16, 4.0])
def test_weight_quantizer_rejects_bad_bits(bits):
    with pytest.raises(ValueError, match="use an integer from 2 to 8"):
        quantize_weight_rtn(torch.randn(2, 4), bits)
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight_rtn(torch.randn(4), 4)


def test_straight_through_gradients_are_identity():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(8, 32, generator=gen, requires_grad=True)
    x = torch.randn(3, 5, 32, generator=gen, requires_grad=True)
    upstream_w, upstream_x = torch.randn(8, 32, generator=gen), torch.randn(3, 5, 32, generator=gen)
    wq = fake_quant_weight(w, 4, 16)
    xq = ActQuantizer(4, sym=False, clip=0.9)(x)
    ((wq * upstream_w).sum() + (xq * upstream_x).sum()).backward()
    assert torch.equal(w.grad, upstream_w) and torch.equal(x.grad, upstream_x)
    with torch.no_grad():  # the forward value is exactly the quantized one
        assert torch.equal(wq, fake_quant_weight(w, 4, 16))
        assert torch.equal(xq, fake_quant(x, 4, False, 0, 0.9))


def test_gradient_reaches_a_rotation_through_the_quantizer():
    gen = torch.Generator().manual_seed(5)
    r = torch.linalg.qr(torch.randn(16, 16, generator=gen))[0].requires_grad_(True)
    w = torch.randn(4, 16, generator=gen)
    fake_quant_weight(w @ r, 4, 8).square().sum().backward()
    assert r.grad is not None and r.grad.abs().sum() > 0


def test_act_quantizer_is_per_token_and_16_bits_is_identity():
    x = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(6))
    assert ActQuantizer(16)(x) is x
    out = ActQuantizer(4, sym=False, clip=1.0)(x)
    for b in range(2):
        for t in range(3):
            assert torch.equal(out[b, t], fake_quant(x[b, t : t + 1], 4, False)[0])
    assert torch.equal(ActQuantizer(8, sym=True)(x), reference_fake_quant(x, 8, True, 0))
    with pytest.raises(ValueError, match="bits=12"):
        ActQuantizer(12)
    with pytest.raises(ValueError, match="clip"):
        ActQuantizer(4, clip=1.2)


@pytest.mark.parametrize("group", [0, 8])
def test_kv_quantizer_groups_along_head_dim(group):
    kv = torch.randn(2, 3, 5, 16, generator=torch.Generator().manual_seed(7))
    out = KVQuantizer(4, group=group)(kv)
    assert out.shape == kv.shape
    assert torch.equal(out, reference_fake_quant(kv, 4, False, group))
    err = (out - kv).abs().max()
    assert 0 < err < kv.abs().max() / 8


def test_quantizer_keeps_dtype():
    x = torch.randn(4, 32).to(torch.bfloat16)
    assert ActQuantizer(4)(x).dtype == torch.bfloat16
    assert not math.isnan(ActQuantizer(4)(x).float().sum().item())
