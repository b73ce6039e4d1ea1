"""Perplexity of a causal LM over fixed token windows (each window scored independently)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

LanguageModel = Callable[[torch.Tensor], torch.Tensor]


def logits_of(model: LanguageModel, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] of `model(tokens)`; unwraps Hugging Face outputs (`.logits`)."""
    out = model(tokens)
    return out.logits if hasattr(out, "logits") else out


def window_nll(model: LanguageModel, windows: torch.Tensor) -> torch.Tensor:
    """Summed next-token negative log-likelihood of each window (float64 [B])."""
    logits = logits_of(model, windows)[:, :-1].float()
    targets = windows[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape).double().sum(dim=1)


def perplexity(model: LanguageModel, windows: torch.Tensor, batch_size: int = 1, progress: bool = True) -> float:
    """exp(mean next-token NLL) over every predicted token of `windows` (LongTensor [n, T], T >= 2)."""
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.shape[0] < 1:
        raise ValueError(f"windows must be a non-empty [n, T>=2] token tensor, got shape {tuple(windows.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    total = torch.zeros((), dtype=torch.float64)
    starts = range(0, windows.shape[0], batch_size)
    with torch.inference_mode():
        for s in tqdm(starts, desc="perplexity", unit="batch", disable=not progress):
            total += window_nll(model, windows[s : s + batch_size].long()).sum()
    return math.exp(total.item() / (windows.shape[0] * (windows.shape[1] - 1)))


def second_half_perplexity(model: LanguageModel, windows: torch.Tensor, progress: bool = True) -> float:
    """llama.cpp's `llama-perplexity` protocol: each window of T tokens is run from its start and only the
    predictions of its second half count (of tokens T/2 + 1 .. T-1), so every scored token has at least T/2
    tokens of context. With the same windows its number and llama.cpp's are comparable."""
    if windows.dim() != 2 or windows.shape[1] < 4:
        raise ValueError(f"windows must be [n, T>=4] tokens, got shape {tuple(windows.shape)}")
    first = windows.shape[1] // 2
    total, count = 0.0, 0
    with torch.inference_mode():
        for w in tqdm(windows, desc="perplexity (second halves)", unit="window", disable=not progress):
            logits = logits_of(model, w[None].long())[0, first:-1].float()
            total += F.cross_entropy(logits, w[first + 1 :].long(), reduction="sum").double().item()
            count += logits.shape[0]
    return math.exp(total / count)
