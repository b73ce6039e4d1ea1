"""Tests of spinquant.eval.harness: lm-eval's tasks answered by our Transformer."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from spinquant.eval import harness
from spinquant.model import load_model, tiny_model
from spinquant.quant.apply import quantize_model
from spinquant.quant.config import QuantConfig


class ByteTokenizer:
    """A stand-in tokenizer for the tiny models (vocab 256): one token per UTF-8 byte, BOS = EOS = 0."""

    bos_token_id = eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token: int) -> str:
        return "\x00"


def one_by_one(model, requests) -> list[tuple[float, bool]]:
    """Reference: each request alone, as HF does it (last max_length inputs, full causal forward)."""
    out = []
    with torch.no_grad():
        for _, ctx, cont in requests:
            seq = (ctx + cont)[-(model.args.max_seq_len + 1) :]
            logp = torch.log_softmax(model(torch.tensor([seq[:-1]])), -1)[0, -len(cont) :]
            target = torch.tensor(cont)
            ll = logp.gather(-1, target[:, None]).sum().item()
            out.append((ll, bool((logp.argmax(-1) == target).all())))
    return out


def requests_of(pairs):
    return [((None, None), list(c), list(k)) for c, k in pairs]


PAIRS = [  # shared contexts of different lengths, one-token and long continuations, a context-free group
    (b"The cat sat on", b" the mat"),
    (b"The cat sat on", b" a hat"),
    (b"The cat sat on", b"!"),
    (b"Q: 2+2?\nA:", b" 4"),
    (b"Q: 2+2?\nA:", b" four, of course"),
    (b"x", b" a much longer continuation than its context"),
    (b"The cat sat on", b" the mat"),  # a duplicate
]


@pytest.mark.parametrize(
    ("arch", "quant", "batch_tokens"),
    [("llama", None, 4096), ("llama", "W4A4KV4", 4096), ("llama", None, 30), ("mistral", None, 4096)],
)
def test_packed_scores_equal_one_request_at_a_time(arch, quant, batch_tokens):
    """Shared-prefix packing, padding and lm_head at the picked positions change nothing but float rounding,
    also with per-token activation and KV quantizers and with a sliding window shorter than the sequences."""
    extra = {"sliding_window": 12} if arch == "mistral" else {}
    model = tiny_model(arch, seed=1, **extra).eval()
    if quant:
        quantize_model(model, QuantConfig.preset(quant), progress=False)
    lm = harness.SpinQuantLM(model, ByteTokenizer(), batch_tokens=batch_tokens)
    requests = requests_of(PAIRS)
    got, ref = lm._loglikelihood_tokens(requests), one_by_one(model, requests)
    assert [g for _, g in got] == [g for _, g in ref]
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in ref], abs=1e-4)


def test_long_requests_are_left_truncated_like_hf():
    model = tiny_model(seed=2, max_seq_len=16).eval()
    lm = harness.SpinQuantLM(model, ByteTokenizer())
    context = b"a long context that does not fit"
    requests = requests_of([(context, b" tail"), (context, b"!")])
    got, ref = lm._loglikelihood_tokens(requests), one_by_one(model, requests)
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in ref], abs=1e-4)
    with pytest.raises(ValueError, match="exceeds the model's 16-token context"):
        lm._loglikelihood_tokens(requests_of([(b"x", b"y" * 17)]))


def test_bf16_scores_stay_close_to_fp32():
    model = tiny_model(seed=3).eval()
    requests = requests_of(PAIRS)
    fp32 = harness.SpinQuantLM(model, ByteTokenizer())._loglikelihood_tokens(requests)
    bf16 = harness.SpinQuantLM(model, ByteTokenizer(), dtype=torch.bfloat16)._loglikelihood_tokens(requests)
    assert [b for b, _ in bf16] == pytest.approx([f for f, _ in fp32], rel=0.05)
    with pytest.raises(ValueError, match="dtype"):
        harness.SpinQuantLM(model, ByteTokenizer(), dtype=torch.float16)


def test_lm_eval_splits_requests_and_moves_the_context_space():
    """TemplateLM's request splitting: the context's trailing space goes to the continuation."""
    model = tiny_model(seed=4).eval()
    lm = harness.SpinQuantLM(model, ByteTokenizer())
    instances = [
        Instance("loglikelihood", {}, ("Answer: ", "yes"), 0),
        Instance("loglikelihood", {}, ("Answer:", " yes"), 1),
        Instance("loglikelihood", {}, ("", "yes"), 2),  # empty context: BOS (= 0) is the context
    ]
    got = lm.loglikelihood(instances, disable_tqdm=True)
    assert got[0] == got[1]
    assert got[2][0] == pytest.approx(one_by_one(model, requests_of([(b"\x00", b"yes")]))[0][0], abs=1e-4)
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("abc",), 0)], disable_tqdm=True)
    assert rolling[0] == pytest.approx(one_by_one(model, requests_of([(b"\x00", b"abc")]))[0][0], abs=1e-4)


EXPECTED = {  # documents in the validation split
    "arc_easy": 570,
    "arc_challenge": 299,
    "hellaswag": 10042,
    "piqa": 1838,
    "openbookqa": 500,
    "winogrande": 1267,
    "boolq": 3270,
    "social_iqa": 1954,
}


def test_default_tasks_read_the_local_validation_splits():
    tasks = {t.task_name: t for t in harness.load_tasks(harness.DEFAULT_TASKS)}
    assert {name: len(task.eval_docs) for name, task in tasks.items()} == EXPECTED
    boolq = tasks["boolq"]
    doc = boolq.eval_docs[0]
    assert boolq.doc_to_text(doc).endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert boolq.doc_to_target(doc) == 0 and boolq.doc_to_choice(doc) == ["no", "yes"]
    arc = tasks["arc_easy"]
    assert arc.doc_to_text(arc.eval_docs[0]) == "Question: Which technology was developed most recently?\nAnswer:"


def test_more_local_tasks():
    tasks = harness.load_tasks(["sciq", "copa", "cb", "rte", "mrpc", "sst2"])
    sizes = {t.task_name: len(t.eval_docs) for t in tasks}
    assert sizes == {"sciq": 1000, "copa": 100, "cb": 56, "rte": 277, "mrpc": 408, "sst2": 872}


def test_unknown_or_unavailable_tasks_fail_in_one_line():
    with pytest.raises(harness.TaskDataError, match="unknown zero-shot task 'nope'"):
        harness.load_tasks(["arc_easy", "nope"])
    with pytest.raises(harness.TaskDataError, match="'lambada_openai': its data .* is not available offline") as err:
        harness.load_tasks(["lambada_openai"])
    assert "\n" not in str(err.value)
    with pytest.raises(harness.TaskDataError, match="no zero-shot tasks"):
        harness.load_tasks([])


def test_zeroshot_reports_lm_eval_metrics_with_stderr():
    model = tiny_model(seed=5).eval()
    res = harness.zeroshot(model, ByteTokenizer(), tasks=["winogrande", "openbookqa"], limit=4, progress=False)
    assert set(res["tasks"]) == {"winogrande", "openbookqa"}
    wino, obqa = res["tasks"]["winogrande"], res["tasks"]["openbookqa"]
    assert (wino["metric"], obqa["metric"]) == ("acc", "acc_norm")
    assert wino["n"] == obqa["n"] == 4 and wino["split"] == obqa["split"] == "validation"
    assert 0 <= wino["value"] <= 1 and wino["stderr"] > 0
    assert res["average"]["headline"] == pytest.approx((wino["value"] + obqa["value"]) / 2)


def compare_with_hf(folder, tasks: list[str], limit: int) -> None:
    """Per-document log-likelihoods, predictions and metrics of our adapter vs lm-eval's own `hf` model."""
    import lm_eval

    model, tokenizer = load_model(folder)
    ours = harness.run_lm_eval(harness.SpinQuantLM(model, tokenizer), tasks, limit, log_samples=True)
    hf = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(folder), "dtype": "float32", "device": "cpu"},
        batch_size=8,
        tasks=harness.load_tasks(tasks),
        task_manager=harness.task_manager(),
        limit=limit,
        log_samples=True,
    )
    a, b = harness.document_loglikelihoods(ours), harness.document_loglikelihoods(hf)
    assert a.keys() == b.keys() == set(tasks)
    for task in tasks:
        assert len(a[task]) == len(b[task]) == limit
        for x, y in zip(a[task], b[task], strict=True):
            assert x == pytest.approx(y, abs=1e-4), task
        for key, value in ours["results"][task].items():
            if key.startswith("acc"):
                assert value == hf["results"][task][key], (task, key)


def test_adapter_equals_lm_eval_hf_on_a_tiny_random_llama(tiny_folder):
    """Every default task (boolq's long passages truncated at the tiny model's 256 positions)."""
    compare_with_hf(tiny_folder, list(harness.DEFAULT_TASKS), limit=3)


def test_adapter_equals_lm_eval_hf_on_the_default_model():
    """The real model on the tasks with short prompts (benchmarks/results/lm-eval-equality.md: all eight)."""
    from spinquant import assets

    compare_with_hf(assets.default_model_dir(), ["arc_easy", "piqa", "winogrande", "openbookqa"], limit=2)
