"""Native int4 GEMM/GEMV (spinquant._kernels via spinquant.kernels) against a float64 PyTorch reference."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spinquant import _kernels, kernels
from spinquant.quant.packing import pack_weight
from spinquant.quant.quantizer import fake_quant, quantize_weight_rtn


def make_weight(n: int, k: int, group: int, asym: bool, seed: int) -> dict[str, torch.Tensor]:
    """Random int4 weight in the storage format of docs/INT4_FORMAT.md, plus its codes."""
    g = torch.Generator().manual_seed(seed)
    groups = math.ceil(k / group)
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    padded = torch.cat([codes, codes.new_zeros(n, k % 2)], dim=1)
    out = {
        "codes": codes,
        "qweight": padded[:, 0::2] | (padded[:, 1::2] << 4),
        "scales": (torch.rand(n, groups, generator=g) * 0.05 + 0.002).half(),
        "zeros": torch.randint(0, 16, (n, groups), generator=g, dtype=torch.uint8) if asym else None,
    }
    return out


def dequant_ref(w: dict[str, torch.Tensor], k: int, group: int) -> torch.Tensor:
    """float64 [N, K] from codes, scales and zero points."""
    idx = torch.arange(k) // group
    zero = w["zeros"].double()[:, idx] if w["zeros"] is not None else 8.0
    return (w["codes"].double() - zero) * w["scales"].double()[:, idx]


def quant_ref(x: torch.Tensor, bits: int, clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-token activation convention, written out in float32 torch ops."""
    xmax = x.amax(-1, keepdim=True).clamp(min=0) * clip
    xmin = x.amin(-1, keepdim=True).clamp(max=0) * clip
    scale = (xmax - xmin) / (2**bits - 1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-xmin / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1)
    return q, scale, zero


def linear_ref(x, w, k, group, act_bits, clip, bias):
    """float64 output and a per-element error budget (1e-5 of the sum of |terms|)."""
    wd = dequant_ref(w, k, group)
    if act_bits == 16:
        xd = x.double()
    else:
        q, scale, zero = quant_ref(x, act_bits, clip)
        xd = (q.double() - zero.double()) * scale.double()
    y = xd @ wd.T
    budget = (xd.abs() + x.double().abs()) @ wd.abs().T
    if bias is not None:
        y = y + bias.double()
        budget = budget + bias.double().abs()
    return y, 1e-5 * budget + 1e-6


def make_layer(w, k, group, bias=None, act_bits=8, clip=1.0, threads=0) -> kernels.Int4Linear:
    return kernels.Int4Linear(w["qweight"], w["scales"], w["zeros"], k, group, bias, act_bits, clip, threads)


def check_close(y: torch.Tensor, ref: torch.Tensor, budget: torch.Tensor) -> None:
    err = (y.double() - ref).abs()
    assert bool((err <= budget).all()), f"max error {err.max():.3g} over budget {budget[err > budget].min():.3g}"


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 70),
    k=st.integers(1, 300),
    group=st.sampled_from([32, 64, 128, 0]),
    asym=st.booleans(),
    with_bias=st.booleans(),
    act_bits=st.sampled_from([4, 8, 16]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(m, n, k, group, asym, with_bias, act_bits, seed):
    w = make_weight(n, k, group or k, asym, seed)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)) * 2
    bias = torch.randn(n) if with_bias else None
    clip = 0.9 if act_bits == 4 else 1.0
    y = make_layer(w, k, group, bias, act_bits, clip)(x)  # group 0 = per-channel, as in spinquant.quant
    check_close(y, *linear_ref(x, w, k, group or k, act_bits, clip, bias))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("clip", [1.0, 0.8])
def test_activation_codes_follow_convention(bits, clip):
    x = torch.randn(37, 513) * 3
    x[0] = 0.0  # all-zero row: scale 1
    x[1] = x[1].abs()  # no negatives: zero point 0
    for isa in kernels.supported_isas():
        with kernels.use_isa(isa):
            codes, scales, zeros = kernels.quantize_activations(x, bits, clip)
        q, scale, zero = quant_ref(x, bits, clip)
        assert torch.equal(codes.float(), q), isa
        assert torch.equal(scales, scale[:, 0]) and torch.equal(zeros.float(), zero[:, 0]), isa


@pytest.mark.parametrize("act_bits", [4, 8])
def test_isas_bit_identical(act_bits):
    k, group = 1000, 32
    w = make_weight(75, k, group, True, 3)
    x, bias = torch.randn(37, k), torch.randn(75)
    outs = {}
    for isa in kernels.supported_isas():
        with kernels.use_isa(isa):
            outs[isa] = make_layer(w, k, group, bias, act_bits)(x)
    for isa, y in outs.items():
        assert torch.equal(y, outs["scalar"]), isa


def test_float_path_isas_close():
    k, group = 4096, 128
    w = make_weight(40, k, group, False, 4)
    x = torch.randn(3, k)
    ref, budget = linear_ref(x, w, k, group, 16, 1.0, None)
    for isa in kernels.supported_isas():
        with kernels.use_isa(isa):
            check_close(make_layer(w, k, group, act_bits=16)(x), ref, budget)


def test_threads_do_not_change_results():
    k, group = 576, 64
    w = make_weight(1536, k, group, False, 5)
    for m in (1, 37):
        x = torch.randn(m, k)
        one = make_layer(w, k, group, threads=1)(x)
        assert torch.equal(one, make_layer(w, k, group, threads=2)(x))
        assert torch.equal(one, make_layer(w, k, group, threads=0)(x))


def test_agrees_with_fake_quantizer():
    """W4A8 kernel == F.linear(fake-quantized activations, dequantized weight) of spinquant.quant."""
    k, group = 256, 32
    w = make_weight(64, k, group, False, 6)
    x = torch.randn(5, 3, k)
    layer = make_layer(w, k, group, act_bits=8, clip=0.9)
    want = torch.nn.functional.linear(fake_quant(x, 8, sym=False, clip=0.9).double(), dequant_ref(w, k, group))
    torch.testing.assert_close(layer(x).double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sym", [True, False])
def test_runs_weights_packed_by_spinquant_quant(sym):
    """quantize_weight_rtn + pack_weight (the checkpoint format) -> the kernel computes x @ dequantized.T."""
    k, group = 200, 64
    qw = quantize_weight_rtn(torch.randn(48, k), 4, group, sym=sym, clip_search=False)
    layer = kernels.Int4Linear.from_packed(pack_weight(qw), k, group, act_bits=16)
    x = torch.randn(3, k)
    torch.testing.assert_close(layer.dequantize(), qw.dequantize().float(), rtol=0, atol=0)
    wd = qw.dequantize().double()
    check_close(layer(x), x.double() @ wd.T, 1e-5 * (x.double().abs() @ wd.abs().T) + 1e-6)


def test_unpack_and_dequantize_round_trip():
    k, group = 77, 32
    w = make_weight(19, k, group, True, 7)
    layer = make_layer(w, k, group)
    q, s, z = layer.native.unpack()
    assert np.array_equal(q, w["qweight"].numpy()) and np.array_equal(s, w["scales"].numpy())
    assert np.array_equal(z, w["zeros"].numpy())
    assert torch.equal(layer.dequantize().double(), dequant_ref(w, k, group))


def test_bad_inputs_raise_value_error():
    k, group = 64, 32
    w = make_weight(8, k, group, False, 8)
    q, s = w["qweight"].numpy(), w["scales"].numpy()
    layer = _kernels.Int4Linear(q, s, None, k, group)
    x = np.zeros((2, k), np.float32)
    bad = {
        "dtype float32": lambda: layer.forward(x.astype(np.float64)),
        "shape": lambda: layer.forward(x[:, :10]),
        "act_bits": lambda: layer.forward(x, 12),
        "act_clip": lambda: layer.forward(x, 8, 1.5),
        "inf or nan": lambda: layer.forward(np.full((2, k), np.inf, np.float32), 8),
        "bias": lambda: layer.forward(x, 8, 1.0, np.zeros(3, np.float32)),
        "dtype float16": lambda: _kernels.Int4Linear(q, s.astype(np.float32), None, k, group),
        "scales has shape": lambda: _kernels.Int4Linear(q, s[:, :1], None, k, 16),
        "qweight has shape": lambda: _kernels.Int4Linear(q, s, None, 2 * k, group),
        "zero point": lambda: _kernels.Int4Linear(q, s, np.full((8, 2), 16, np.uint8), k, group),
        "group": lambda: _kernels.Int4Linear(q, s, None, k, -3),
    }
    for expected, call in bad.items():
        with pytest.raises(ValueError, match=expected):
            call()


@pytest.mark.parametrize("isa", ["scalar", kernels.supported_isas()[-1]])
def test_isa_environment_override(isa):
    code = "from spinquant import _kernels; print(_kernels.active_isa())"
    env = {**os.environ, "SPINQUANT_ISA": isa, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == isa
