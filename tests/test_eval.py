"""Tests of spinquant.eval.perplexity (the zero-shot harness: test_harness.py)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from spinquant.eval.perplexity import perplexity

VOCAB = 256


class CausalBag(nn.Module):
    """A tiny random causal LM: logits at t depend on the running mean of embeddings up to t."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).cumsum(1) / torch.arange(1, tokens.shape[1] + 1)[:, None]
        return self.head(torch.tanh(h)) * 3


def test_uniform_model_has_perplexity_vocab_size():
    model = lambda t: torch.zeros(*t.shape, 97)  # noqa: E731
    windows = torch.randint(0, 97, (3, 20))
    assert perplexity(model, windows, batch_size=2, progress=False) == pytest.approx(97.0, rel=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_perplexity_matches_direct_cross_entropy(batch_size):
    model = CausalBag()
    windows = torch.randint(0, VOCAB, (5, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(windows)
        ref = math.exp(F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), windows[:, 1:].reshape(-1)).item())
    assert perplexity(model, windows, batch_size=batch_size, progress=False) == pytest.approx(ref, rel=1e-5)


def test_perplexity_unwraps_hf_outputs_and_checks_shapes():
    class Out:
        def __init__(self, logits):
            self.logits = logits

    model = lambda t: Out(torch.zeros(*t.shape, 11))  # noqa: E731
    assert perplexity(model, torch.zeros(2, 4, dtype=torch.long), progress=False) == pytest.approx(11.0)
    with pytest.raises(ValueError, match="windows"):
        perplexity(model, torch.zeros(8, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(model, torch.zeros(2, 4, dtype=torch.long), batch_size=0, progress=False)


@pytest.mark.slow
def test_real_model_anchor_perplexity():
    """SmolLM2-135M fp32 on the anchor windows (value measured with this code; see the data module)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from spinquant import data
    from spinquant.model import load_model

    model, tok = load_model()
    assert perplexity(model, data.anchor_windows(tok, 8, 512), progress=False) == pytest.approx(11.37, rel=0.01)
