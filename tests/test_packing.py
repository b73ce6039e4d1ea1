"""int4 packing in the layout of docs/INT4_FORMAT.md, and the quantized-weight storage round trip."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spinquant.quant import pack_int4, pack_weight, quantize_weight_rtn, unpack_int4, unpack_weight


def test_nibble_order_hand_case():
    codes = torch.tensor([[1, 2, 3], [15, 0, 8]], dtype=torch.uint8)
    packed = pack_int4(codes)
    # even k in the low nibble, odd k in the high nibble, a missing last odd code is 0
    assert packed.tolist() == [[0x21, 0x03], [0x0F, 0x08]]
    assert torch.equal(unpack_int4(packed, 3), codes)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 41), seed=st.integers(0, 2**31 - 1))
def test_pack_round_trip(n, k, seed):
    codes = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (n, (k + 1) // 2)
    assert torch.equal(unpack_int4(packed, k), codes)
    # independent decode of the documented layout
    for j in range(k):
        nibble = (packed[:, j // 2] >> (4 * (j % 2))) & 0xF
        assert torch.equal(nibble, codes[:, j])


def test_pack_rejects_bad_codes():
    with pytest.raises(ValueError, match="code 16 > 15"):
        pack_int4(torch.tensor([[16, 0]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pack_int4(torch.tensor([[1, 2]], dtype=torch.int32))
    with pytest.raises(ValueError, match="2-D"):
        pack_int4(torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="does not hold K=5"):
        unpack_int4(torch.zeros(2, 2, dtype=torch.uint8), 5)
    with pytest.raises(ValueError, match="uint8"):
        unpack_int4(torch.zeros(2, 2, dtype=torch.int8), 4)


def _doc_dequantize(d, k, group, asym):
    """Dequantize 4-bit storage straight from the INT4_FORMAT.md formulas."""
    q = torch.stack([d["qweight"] & 0xF, d["qweight"] >> 4], -1).reshape(d["qweight"].shape[0], -1)[:, :k]
    g = torch.arange(k) // group
    zero = d["zeros"].float()[:, g] if asym else 8.0
    return (q.float() - zero) * d["scales"].float()[:, g]


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(("bits", "group", "k"), [(4, 32, 64), (4, 32, 45), (4, 0, 17), (3, 8, 24), (2, 4, 9)])
def test_int4_weight_round_trip_and_doc_formula(sym, bits, group, k):
    w = torch.randn(5, k, generator=torch.Generator().manual_seed(k))
    qw = quantize_weight_rtn(w, bits, group, sym, clip_search=False)
    d = pack_weight(qw)
    assert set(d) == ({"qweight", "scales"} if sym else {"qweight", "scales", "zeros"})
    assert d["qweight"].shape == (5, (k + 1) // 2) and d["scales"].dtype == torch.float16
    assert torch.equal(_doc_dequantize(d, k, qw.group, not sym), qw.dequantize())
    back = unpack_weight(d, k, group, bits)
    assert torch.equal(back.codes, qw.codes) and back.bits == bits and back.sym == sym
    assert back.group == qw.group and torch.equal(back.dequantize(), qw.dequantize())


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [5, 8])
def test_wide_codes_keep_one_byte_each(sym, bits):
    w = torch.randn(3, 11, generator=torch.Generator().manual_seed(bits))
    qw = quantize_weight_rtn(w, bits, 4, sym, clip_search=False)
    d = pack_weight(qw)
    assert d["qweight"].shape == (3, 11) and torch.equal(d["qweight"], qw.codes)
    back = unpack_weight(d, 11, 4, bits)
    assert torch.equal(back.dequantize(), qw.dequantize())


def test_unpack_weight_errors():
    qw = quantize_weight_rtn(torch.randn(2, 8), 4, 4)
    d = pack_weight(qw)
    with pytest.raises(ValueError, match="lacks"):
        unpack_weight({"qweight": d["qweight"]}, 8, 4)
    with pytest.raises(ValueError, match="bits=16"):
        unpack_weight(d, 8, 4, bits=16)
    with pytest.raises(ValueError, match="columns"):
        unpack_weight(d, 8, 4, bits=8)
