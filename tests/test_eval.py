"""Tests of spinquant.eval: perplexity and the lm-eval-style zero-shot scorer."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from spinquant.eval import zeroshot as zs
from spinquant.eval.perplexity import perplexity

VOCAB = 256


class ByteTokenizer:
    """A stand-in tokenizer: one token per UTF-8 byte."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))


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


class Prefers(nn.Module):
    """Puts almost all probability on one token id at every position."""

    def __init__(self, token: int):
        super().__init__()
        self.token = token

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, VOCAB)
        logits[..., self.token] = 10.0
        return logits


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


def test_encode_request_moves_trailing_space_to_continuation():
    ctx, cont = zs.encode_request(ByteTokenizer(), "Answer: ", "yes")
    assert bytes(ctx) == b"Answer:" and bytes(cont) == b" yes"


def test_score_requests_match_unpadded_log_likelihoods():
    model, tok = CausalBag(seed=3), ByteTokenizer()
    pairs = [("The cat sat", " on the mat"), ("Q: 2+2?\nA:", " 4"), ("x", " a much longer continuation here")]
    requests = [zs.encode_request(tok, c, k) for c, k in pairs]
    ref = []
    with torch.no_grad():
        for ctx, cont in requests:
            seq = torch.tensor([ctx + cont])
            logp = torch.log_softmax(model(seq[:, :-1]), -1)[0]
            ref.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
    for batch_size in (1, 2, 16):
        got = zs.score_requests(model, requests, batch_size=batch_size)
        assert got == pytest.approx(ref, rel=1e-5)
    truncated = zs.score_requests(model, requests[:1], max_len=14)[0]
    ctx, cont = requests[0]
    seq = torch.tensor([(ctx + cont)[-15:]])  # the context loses its first 7 tokens
    with torch.no_grad():
        logp = torch.log_softmax(model(seq[:, :-1]), -1)[0]
    ref = sum(logp[14 - len(cont) + j, t].item() for j, t in enumerate(cont))
    assert truncated == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        zs.score_requests(model, requests[:1], max_len=10)


def test_scorer_picks_the_continuation_the_model_prefers():
    tok = ByteTokenizer()
    examples = [
        zs._shared_context("Pick:", ["aaaa", "bbbb", "cc"], 0),
        zs._shared_context("Again:", ["zz", "aaaaaa"], 1),
    ]
    res = zs.evaluate_examples(Prefers(ord("a")), tok, examples, batch_size=3)
    assert res == {"acc": 1.0, "acc_norm": 1.0, "n": 2.0}
    # "b" preferred: " bbbb" wins the first (wrong); on the second every token is unlikely, so the raw sum
    # picks the shorter " zz" (wrong) and the per-character score the longer " aaaaaa" (right)
    res = zs.evaluate_examples(Prefers(ord("b")), tok, examples, batch_size=3)
    assert (res["acc"], res["acc_norm"]) == (0.0, 0.5)


def test_acc_norm_divides_by_choice_length_in_characters():
    ex = zs.Example(requests=((".", " a"), (".", " b")), choices=("a", "bbbbbbbbbb"), gold=1)
    assert zs.accuracy([ex], [[-2.0, -5.0]]) == {"acc": 0.0, "acc_norm": 1.0, "n": 1.0}
    # lm-eval normalizes by len(str): "éé" counts 2 (4 bytes in UTF-8); -2.6/2 < -3.5/3 picks choice 1
    ex = zs.Example(requests=((".", " éé"), (".", " abc")), choices=("éé", "abc"), gold=1)
    assert zs.accuracy([ex], [[-2.6, -3.5]])["acc_norm"] == 1.0


def test_hellaswag_cleanup():
    # lm-eval's exact behaviour: strip first, so a leading bracket leaves a space; one pass of "  " -> " "
    assert zs.hellaswag_clean(" [header] How to cook [title] Boil water.  [step] Wait ") == (
        " How to cook. Boil water.  Wait"
    )


EXPECTED = {  # rows in the validation split, choices per example
    "arc_easy": (570, 4),
    "arc_challenge": (299, 4),
    "hellaswag": (10042, 4),
    "piqa": (1838, 2),
    "openbookqa": (500, 4),
    "winogrande": (1267, 2),
    "boolq": (3270, 2),
    "social_iqa": (1954, 3),
}


@pytest.mark.parametrize("task", zs.DEFAULT_TASKS)
def test_task_loaders(task):
    examples = zs.load_task(task)
    rows, n_choices = EXPECTED[task]
    assert len(examples) == rows
    assert all(0 <= ex.gold < len(ex.choices) for ex in examples)
    assert all(len(ex.requests) == len(ex.choices) for ex in examples)
    assert sum(len(ex.choices) == n_choices for ex in examples) >= 0.95 * rows
    assert all(k.startswith(" ") and c and not c.endswith(" ") for ex in examples for c, k in ex.requests)
    assert {ex.gold for ex in examples} >= set(range(n_choices))  # every answer position occurs


def test_task_prompts_follow_lm_eval():
    arc = zs.load_task("arc_easy")[0]
    assert arc.requests[0] == (
        "Question: Which technology was developed most recently?\nAnswer:",
        " cellular telephone",
    )
    wino = zs.load_task("winogrande")[0]
    assert wino.requests == (
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    )
    assert wino.gold == 1
    boolq = zs.load_task("boolq")[0]
    assert boolq.requests[0][0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [k for _, k in boolq.requests] == [" no", " yes"] and boolq.gold == 0
    hs = zs.load_task("hellaswag")[0]
    assert hs.requests[0][0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs.gold == 3
    siqa = zs.load_task("social_iqa")[0]
    assert siqa.requests[0][0].startswith("Q: Tracy didn't go home") and siqa.requests[0][0].endswith("\nA:")
    assert siqa.gold == 2


def test_subset_is_seeded_and_ordered():
    examples = zs.load_task("openbookqa")
    a = zs.subset(examples, 10, seed=0)
    assert a == zs.subset(examples, 10, seed=0) and a != zs.subset(examples, 10, seed=1)
    index = {id(ex): i for i, ex in enumerate(examples)}
    assert [index[id(ex)] for ex in a] == sorted(index[id(ex)] for ex in a)
    with pytest.raises(ValueError, match="limit"):
        zs.subset(examples, 0)


def test_zeroshot_reports_every_task_and_the_average():
    res = zs.zeroshot(CausalBag(), ByteTokenizer(), tasks=["winogrande", "openbookqa"], limit=4, progress=False)
    assert set(res) == {"winogrande", "openbookqa", "average"}
    assert res["winogrande"]["headline"] == res["winogrande"]["acc"]
    assert res["openbookqa"]["headline"] == res["openbookqa"]["acc_norm"]
    assert res["average"]["acc"] == pytest.approx((res["winogrande"]["acc"] + res["openbookqa"]["acc"]) / 2)
    assert res["average"]["n"] == 8
    with pytest.raises(ValueError, match="unknown zero-shot task"):
        zs.zeroshot(CausalBag(), ByteTokenizer(), tasks=["nope"], progress=False)


@pytest.mark.slow
def test_real_model_anchor_perplexity():
    """SmolLM2-135M fp32 on the anchor windows (value measured with this code; see the data module)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from spinquant import data
    from spinquant.model import load_model

    model, tok = load_model()
    assert perplexity(model, data.anchor_windows(tok, 8, 512), progress=False) == pytest.approx(11.37, rel=0.01)
