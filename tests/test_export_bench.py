"""The benchmark's bookkeeping (no timing): streamed bytes, the table, the chart, the load warning, eager runner."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("executorch")

from spinquant.export import bench  # noqa: E402
from spinquant.model import tiny_model  # noqa: E402


def test_streamed_bytes_counts_int4_codes_scales_and_one_embedding_row():
    model = tiny_model()
    a = model.args
    shapes = [(a.n_heads * a.head_dim, a.dim), (a.n_kv_heads * a.head_dim, a.dim), (a.n_kv_heads * a.head_dim, a.dim)]
    shapes += [(a.dim, a.n_heads * a.head_dim), (a.hidden_dim, a.dim), (a.hidden_dim, a.dim), (a.dim, a.hidden_dim)]
    per_layer = sum(n * k // 2 + n * -(-k // 32) * 2 for n, k in shapes)
    lm_head = a.vocab_size * a.dim // 2 + a.vocab_size * (a.dim // 32) * 2
    assert bench.streamed_bytes(model, 32) == a.n_layers * per_layer + lm_head + a.dim * 4


def test_table_chart_and_load_warning(tmp_path, capsys, monkeypatch):
    results = [bench.Result("w4a8_no_had", t, 3.0 / t, 100.0 * t, [3.0 / t], 0.1) for t in (1, 2)] + [
        bench.Result("xnnpack_8da4w", 2, 5.7, 90.0, [5.7], 0.1),
        bench.Result(bench.FLOOR, 2, 1.2, 800.0, [1.2], 0.1),
    ]
    table = bench.markdown(results)
    assert "| w4a8_no_had | 2 | 1.50 | 200 | 0.10 |" in table
    assert "| w4a8_no_had / read_floor | 2 | 1.250 |" in table and "2 thread(s) 1.20 ms" in table
    bench.plot(results, tmp_path / "decode.png", "tiny decode: 16-token prompt, 32 new tokens")
    assert (tmp_path / "decode.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(bench, "machine_load", lambda: 3.0)
    assert bench.warn_if_loaded() == 3.0
    assert "WARNING: load average 3.00" in capsys.readouterr().out


def test_prefill_ratios_and_fraction_of_the_int8_peak():
    results = [
        bench.Result("w4a8_no_had", 1, 2.0, 500.0, [2.0, 2.0], 0.1, prefill_runs=[500.0, 600.0]),
        bench.Result("xnnpack_8da4w", 1, 4.0, 250.0, [4.0, 4.0], 0.1, prefill_runs=[250.0, 200.0]),
    ]
    assert bench.prefill_ratios(results) == [("xnnpack_8da4w", "w4a8_no_had", 1, 2.5)]  # median of 2.0 and 3.0
    peaks = [bench.Peak(1, 100e9, "vpdpbusd zmm", [100e9])]
    table = bench.markdown(results, peaks, macs=10 * 10**9, prompt_len=500)  # 10 GMAC a 500-token prompt
    assert "| w4a8_no_had over xnnpack_8da4w | 1 | 2.500 |" in table
    assert "| w4a8_no_had | 1 | 10.0 | 100.0 | 10% |" in table  # one prompt a second


def test_prefill_macs_count_the_lm_head_once():
    a = tiny_model().args
    q, kv = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    per_token = a.n_layers * (a.dim * q * 2 + a.dim * kv * 2 + 3 * a.dim * a.hidden_dim)
    assert bench.prefill_macs(a, 7) == 7 * per_token + a.vocab_size * a.dim


def test_int8_peak_is_positive_and_checks_its_arguments():
    from spinquant.kernels import int8_peak

    rate, instruction = int8_peak(1, 0.01)
    assert rate > 0 and instruction
    with pytest.raises(ValueError, match="threads must be >= 1"):
        int8_peak(0)


def test_floor_runner_reads_its_buffer_on_the_kernels_pool():
    from spinquant.kernels import read_bytes

    runner = bench.FloorRunner(1024)
    runner.set_threads(2)
    assert runner.prefetch == {2: runner.prefetch[2]} and runner.prefetch[2] in bench.FloorRunner.PREFETCH_CHOICES
    assert runner.forward([1, 2], 0) == 0
    for prefetch in (0, 64, 16384):
        assert read_bytes(runner.buffer, 2, prefetch) == 128 * 0x0101010101010101
    with pytest.raises(TypeError):
        read_bytes(runner.buffer.view("float32"), 1)
    with pytest.raises(ValueError, match="prefetch_bytes must be >= 0"):
        read_bytes(runner.buffer, 1, -1)


def test_eager_runner_greedy_matches_model():
    model = tiny_model()
    runner = bench.EagerRunner(model, 32)
    ids = [5, 6, 7, 8]
    nxt = runner.forward(ids, 0)
    with torch.no_grad():
        assert nxt == int(model(torch.tensor([ids]))[0, -1].argmax())
        assert runner.forward([nxt], 4) == int(model(torch.tensor([ids + [nxt]]))[0, -1].argmax())
    assert bench.time_run(runner, ids, 3)[1] > 0


def test_bench_command_passes_its_options(monkeypatch, tmp_path):
    from spinquant import cli

    seen = {}
    monkeypatch.setattr(bench, "run_bench", lambda **kw: seen.update(kw))
    variants = "w4a8_no_had,xnnpack_8da4w"
    cli.main(["bench", "--out", str(tmp_path), "--threads", "1,2", "--variants", variants, "--name", "decode-long"])
    assert seen["threads"] == [1, 2] and seen["variants"] == ["w4a8_no_had", "xnnpack_8da4w"]
    assert seen["name"] == "decode-long"


def _scheduler_after_lowest_priority(queue) -> None:
    import os

    bench._lowest_priority()
    queue.put(os.sched_getscheduler(0) if hasattr(os, "SCHED_IDLE") else os.getpriority(os.PRIO_PROCESS, 0))


def test_baseline_export_children_run_on_idle_cycles_only():
    import multiprocessing as mp
    import os

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_scheduler_after_lowest_priority, args=(queue,))
    child.start()
    got = queue.get(timeout=120)
    child.join()
    assert got == (os.SCHED_IDLE if hasattr(os, "SCHED_IDLE") else 19)


def test_prompt_ids_take_wiki_text_beyond_the_built_in_prompt():
    import transformers

    from spinquant import assets
    from spinquant.data import test_windows

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(assets.default_model_dir()))
    assert bench.prompt_ids(tokenizer, 16) == tokenizer.encode(bench.PROMPT)[:16]
    long = bench.prompt_ids(tokenizer, 300)
    assert long == test_windows(tokenizer, 300, 1)[0].tolist() and len(long) == 300
