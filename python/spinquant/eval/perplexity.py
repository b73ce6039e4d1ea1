"""Perplexity of a causal LM over fixed token windows, with its uncertainty.

Each window is scored independently (no context carried across windows, as the paper and lm-eval's
rolling perplexity with non-overlapping windows do). The uncertainty comes from the text, not the model:
`Perplexity.ci` is a percentile bootstrap over windows, and `paired_difference` compares two models on the
same windows by the per-window difference of mean NLL, whose bootstrap interval says whether the gap is
more than which text happened to be chosen. All windows of one set have the same length, so every window
weighs the same.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

LanguageModel = Callable[[torch.Tensor], torch.Tensor]
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def logits_of(model: LanguageModel, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] of `model(tokens)`; unwraps Hugging Face outputs (`.logits`)."""
    out = model(tokens)
    return out.logits if hasattr(out, "logits") else out


def compute_dtype(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16 autocast of the matmuls on CPU for `dtype=torch.bfloat16`; full precision for None / float32."""
    if dtype in (None, torch.float32):
        return contextlib.nullcontext()
    if dtype != torch.bfloat16:
        raise ValueError(f"compute dtype {dtype} is not supported: use torch.float32 or torch.bfloat16")
    return torch.autocast("cpu", dtype=torch.bfloat16)


def window_nll(model: LanguageModel, windows: torch.Tensor) -> torch.Tensor:
    """Summed next-token negative log-likelihood of each window (float64 [B])."""
    logits = logits_of(model, windows)[:, :-1].float()
    targets = windows[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape).double().sum(dim=1)


def _check_windows(windows: torch.Tensor, batch_size: int) -> None:
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.shape[0] < 1:
        raise ValueError(f"windows must be a non-empty [n, T>=2] token tensor, got shape {tuple(windows.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def window_nlls(
    model: LanguageModel,
    windows: torch.Tensor,
    batch_size: int = 1,
    progress: bool = True,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Mean next-token NLL of every window (float64 [n]); `dtype=torch.bfloat16` runs the matmuls in bf16."""
    _check_windows(windows, batch_size)
    sums = []
    starts = range(0, windows.shape[0], batch_size)
    with torch.inference_mode(), compute_dtype(dtype):
        for s in tqdm(starts, desc="perplexity", unit="batch", disable=not progress, leave=False):
            sums.append(window_nll(model, windows[s : s + batch_size].long()))
    return (torch.cat(sums) / (windows.shape[1] - 1)).numpy()


def perplexity(model: LanguageModel, windows: torch.Tensor, batch_size: int = 1, progress: bool = True) -> float:
    """exp(mean next-token NLL) over every predicted token of `windows` (LongTensor [n, T], T >= 2)."""
    return Perplexity.of(window_nlls(model, windows, batch_size, progress)).value


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` seeded resamples (with replacement) of `values`."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[idx].mean(axis=1)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Perplexity:
    """Perplexity of a set of equal-length windows, from their per-window mean NLLs, with a bootstrap CI."""

    nll: np.ndarray  # mean NLL per window, float64 [n]

    @classmethod
    def of(cls, nll: np.ndarray) -> Perplexity:
        nll = np.asarray(nll, dtype=np.float64)
        if nll.ndim != 1 or len(nll) == 0:
            raise ValueError(f"need a non-empty 1-D array of per-window NLLs, got shape {nll.shape}")
        return cls(nll)

    @property
    def value(self) -> float:
        return math.exp(float(self.nll.mean()))

    def ci(self, level: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
        """Percentile bootstrap interval of the perplexity over windows (a single window: no spread, (v, v))."""
        if len(self.nll) == 1:
            return self.value, self.value
        lo, hi = _interval(_bootstrap_means(self.nll, resamples, seed), level)
        return math.exp(lo), math.exp(hi)

    def to_dict(self) -> dict:
        lo, hi = self.ci()
        return {"ppl": self.value, "ci95": [lo, hi], "windows": len(self.nll), "nll": self.nll.tolist()}


@dataclass(frozen=True)
class PairedDifference:
    """Mean over windows of NLL(a) - NLL(b) on the same windows, with a paired bootstrap CI.

    Negative: a is better. `ratio` = exp(mean difference) = ppl(a) / ppl(b)."""

    mean: float
    lo: float
    hi: float
    windows: int

    @property
    def significant(self) -> bool:
        """The CI excludes zero."""
        return self.lo > 0 or self.hi < 0

    @property
    def ratio(self) -> float:
        return math.exp(self.mean)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.lo, self.hi], "windows": self.windows, "significant": self.significant}


def paired_difference(
    a: np.ndarray, b: np.ndarray, level: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> PairedDifference:
    """The paired difference of per-window mean NLLs `a - b` (same windows, same order)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired NLLs must be two 1-D arrays over the same windows, got {a.shape} and {b.shape}")
    d = a - b
    lo, hi = (float(d.mean()),) * 2 if len(d) == 1 else _interval(_bootstrap_means(d, resamples, seed), level)
    return PairedDifference(float(d.mean()), lo, hi, len(d))


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
