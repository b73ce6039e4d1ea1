"""The standard ExecuTorch path the benchmark compares against: the llama recipe's graph equals our fp32 decoder,
its 8da4w XNNPACK program matches its eager quantized model, and timing it at alternating thread counts (which
replaces ExecuTorch's thread pool) does not crash."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("executorch")

from spinquant.export import baseline, bench  # noqa: E402
from spinquant.export.exportable import ExportableDecoder  # noqa: E402
from spinquant.export.exporter import build_metadata, host_target  # noqa: E402
from spinquant.model import tiny_model  # noqa: E402


@torch.no_grad()
def test_standard_graph_equals_our_fp32_decoder():
    model = tiny_model()
    ours, std = ExportableDecoder(model, 32).eval(), baseline.StandardDecoder(model, 32).eval()
    ids = torch.tensor([[3, 9, 4, 7, 1]])
    torch.testing.assert_close(std(ids, torch.arange(5)), ours(ids, torch.arange(5)), atol=1e-5, rtol=1e-5)
    for pos, tok in ((5, 11), (6, 2)):  # decode steps read the KV cache written by the prefill
        step = torch.tensor([[tok]]), torch.tensor([pos])
        torch.testing.assert_close(std(*step), ours(*step), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    model = tiny_model()
    decoder = baseline.StandardDecoder(model, 32)
    path = tmp_path_factory.mktemp("baseline") / "xnnpack_8da4w.pte"
    baseline.export_xnnpack_8da4w(decoder, path, build_metadata(model, host_target(), False, None, None, 32))
    return path, decoder  # `decoder` is quantized in place by the export


def test_program_matches_its_eager_quantized_model(program):
    path, quantized = program
    baseline.load_llama_ops()
    runner = bench.PteRunner(path, delegated=True)
    ids = torch.tensor([[3, 9, 4, 7, 1]])
    with torch.no_grad():
        want = quantized.eval()(ids, torch.arange(5))
    got = runner.model.forward(ids, torch.arange(5))
    # XNNPACK and torchao's eager 8da4w may round an int8 activation code differently: close, not equal.
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_alternating_thread_counts_reload_the_program(program):
    path, _ = program
    baseline.load_llama_ops()
    runner = bench.PteRunner(path, delegated=True)
    tokens = []
    for threads in (1, 2, 1, 2):
        runner.set_threads(threads)
        tokens.append(runner.forward([3, 9, 4], 0))
    assert len(set(tokens)) == 1
    assert bench._et_pool["threads"] == 2


def test_paired_ratios_take_the_median_of_per_round_ratios():
    results = [
        bench.Result("w4a8_no_had", 1, 2.0, 0.0, [2.0, 4.0, 2.0], 0.0),
        bench.Result("w4a8_had", 1, 2.1, 0.0, [2.1, 4.0, 2.2], 0.0),
        bench.Result("xnnpack_8da4w", 1, 6.0, 0.0, [6.0, 8.0, 5.0], 0.0),
    ]
    got = {(num, t): round(r, 4) for num, _, t, r in bench.paired_ratios(results)}
    assert got == {("xnnpack_8da4w", 1): 2.5, ("w4a8_had", 1): 1.05}


def test_is_current_tells_stale_programs_apart(program, tmp_path):
    from spinquant.export.runtime import is_current

    path, _ = program
    junk = tmp_path / "old.pte"
    junk.write_bytes(b"not a program")
    assert is_current(path) and not is_current(junk) and not is_current(tmp_path / "missing.pte")


def test_background_export_leaves_a_program_the_bench_reuses(tiny_folder, tmp_path):
    from spinquant.export.runtime import is_current

    procs = bench.start_xnnpack_exports(str(tiny_folder), tmp_path, ["fp32_eager", "xnnpack_8da4w", "w4a8_no_had"])
    assert len(procs) == 1  # only XNNPACK variants go to the background
    procs[0].join(timeout=900)
    assert procs[0].exitcode == 0
    path = tmp_path / "xnnpack_8da4w.pte"
    assert is_current(path)
    written = path.stat().st_mtime_ns
    assert bench.export_xnnpack("xnnpack_8da4w", str(tiny_folder), tmp_path, 256) == path
    assert path.stat().st_mtime_ns == written  # reused, not exported again
