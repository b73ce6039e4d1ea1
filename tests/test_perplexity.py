"""Perplexity with its uncertainty: per-window NLLs, bootstrap intervals, paired differences, bf16."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from spinquant.eval.perplexity import Perplexity, compute_dtype, paired_difference, perplexity, window_nlls


class Bag(nn.Module):
    """A tiny random causal LM (running mean of embeddings -> logits)."""

    def __init__(self, vocab: int = 64, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed, self.head = nn.Embedding(vocab, 16), nn.Linear(16, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).cumsum(1) / torch.arange(1, tokens.shape[1] + 1)[:, None]
        return self.head(torch.tanh(h)) * 3


WINDOWS = torch.randint(0, 64, (12, 40), generator=torch.Generator().manual_seed(3))


def test_window_nlls_average_to_the_perplexity():
    nll = window_nlls(Bag(), WINDOWS, batch_size=5, progress=False)
    assert nll.shape == (12,) and nll.dtype == np.float64
    assert math.exp(nll.mean()) == pytest.approx(perplexity(Bag(), WINDOWS, progress=False), rel=1e-12)


def test_bootstrap_interval_holds_the_value_and_is_seeded():
    ppl = Perplexity.of(window_nlls(Bag(), WINDOWS, progress=False))
    lo, hi = ppl.ci()
    assert lo < ppl.value < hi
    assert ppl.ci() == (lo, hi)  # same seed, same interval
    assert Perplexity.of(np.full(5, 2.0)).ci() == pytest.approx((math.exp(2), math.exp(2)))  # no spread
    assert Perplexity.of([1.5]).ci() == (ppl.of([1.5]).value,) * 2
    with pytest.raises(ValueError, match="per-window"):
        Perplexity.of(np.zeros((2, 2)))


def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        nll = rng.normal(2.0, 0.3, size=30)
        lo, hi = Perplexity.of(nll).ci(resamples=500, seed=trial)
        covered += lo <= math.exp(2.0) <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_difference_sees_a_small_consistent_gap_that_unpaired_spread_hides():
    rng = np.random.default_rng(1)
    text = rng.normal(2.5, 0.5, size=16)  # windows differ a lot in difficulty
    a, b = text + 0.01 + rng.normal(0, 0.002, 16), text
    d = paired_difference(a, b)
    assert d.significant and d.lo > 0 and d.mean == pytest.approx(0.01, abs=0.002)
    assert d.ratio == pytest.approx(math.exp(d.mean))
    lo_a, hi_a = Perplexity.of(a).ci()
    assert lo_a < Perplexity.of(b).value < hi_a  # the per-model intervals overlap
    same = paired_difference(b, b)
    assert not same.significant and same.mean == 0
    with pytest.raises(ValueError, match="same windows"):
        paired_difference(a, b[:-1])


def test_bf16_matmuls_move_nll_little_and_other_dtypes_are_refused():
    fp32 = window_nlls(Bag(), WINDOWS, progress=False)
    bf16 = window_nlls(Bag(), WINDOWS, progress=False, dtype=torch.bfloat16)
    assert np.abs(bf16 - fp32).max() < 0.02 and not np.array_equal(bf16, fp32)
    with pytest.raises(ValueError, match="bfloat16"):
        compute_dtype(torch.float16)
