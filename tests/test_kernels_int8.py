"""Native int8 linear (lm_head) and embedding gather against the ops' PyTorch reference, on every ISA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spinquant import _kernels
from spinquant.export.ops import _int8_embedding_ref, _int8_linear_ref


def _table(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scales = (torch.rand(n, generator=g) * 0.05 + 0.001).half().float()
    return codes, scales, codes.sum(1, dtype=torch.int32)


@pytest.mark.parametrize(("m", "n", "k"), [(1, 67, 576), (5, 33, 100), (3, 8, 17)])
@pytest.mark.parametrize("with_pre", [False, True])
def test_linear_matches_reference_and_every_isa(m, n, k, with_pre):
    codes, scales, rowsum = _table(n, k, seed=n + k)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g)
    pre = torch.randn(k, k, generator=g) / k**0.5 if with_pre else None
    args = (codes.numpy(), scales.numpy(), rowsum.numpy(), None if pre is None else pre.numpy())
    outs = {}
    try:
        for isa in _kernels.supported_isas():
            _kernels.force_isa(isa)
            outs[isa] = _kernels.int8_linear(x.numpy(), *args)
    finally:
        _kernels.reset_isa()
    want = outs["scalar"]
    for isa, got in outs.items():
        assert np.array_equal(got, want), isa
    ref = _int8_linear_ref(x, codes, scales, rowsum, pre=pre)
    # The integer path equals the fake quantizer's codes; sums differ in fp32 rounding only (without `pre`; with it,
    # torch's matmul rounds differently, which may move an activation code by one).
    tol = 2e-2 if with_pre else 1e-4
    torch.testing.assert_close(torch.from_numpy(want), ref, atol=tol, rtol=tol)


def test_embedding_is_exact_and_rejects_bad_ids():
    codes, scales, _ = _table(50, 19, seed=3)
    ids = torch.tensor([0, 49, 7, 7])
    got = _kernels.int8_embedding(ids.numpy(), codes.numpy(), scales.numpy())
    assert torch.equal(torch.from_numpy(got), _int8_embedding_ref(ids, codes, scales))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        _kernels.int8_embedding(np.array([50]), codes.numpy(), scales.numpy())


def test_row_sums():
    codes, _, rowsum = _table(9, 70, seed=1)
    assert np.array_equal(_kernels.int8_row_sums(codes.numpy()), rowsum.numpy())
