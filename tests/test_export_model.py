"""End to end on a tiny random model: rotate, quantize, export to .pte, run through the ExecuTorch runtime;
compare with the eager quantized model (logits, incremental decode, greedy tokens, perplexity); errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("executorch")

from spinquant.export import runtime  # noqa: E402
from spinquant.export.cli import prepare_model  # noqa: E402
from spinquant.export.exportable import ExportableDecoder, ExportError  # noqa: E402
from spinquant.export.exporter import export_model, host_target  # noqa: E402
from spinquant.export.runtime import PteModel, RuntimeLoadError  # noqa: E402
from spinquant.model import tiny_model  # noqa: E402
from spinquant.quant.config import QuantConfig  # noqa: E402

SEQ = 32
CASES = {  # (config, had, tied embeddings)
    "w4a8_no_had": (QuantConfig(w_bits=4, w_group=32, a_bits=8), False, False),
    "w4a4kv4_had": (QuantConfig(w_bits=4, w_group=32, a_bits=4, kv_bits=4, lm_head_bits=4), True, False),
    # the device recipe's ends: one int8 table for the embedding and lm_head
    "w4a8_ends8_tied": (QuantConfig(w_bits=4, w_group=32, a_bits=8, embed_bits=8, lm_head_bits=8), True, True),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    cfg, had, tied = CASES[request.param]
    model = prepare_model(tiny_model(seed=1, tie_word_embeddings=tied), cfg, had, seed=0)
    path = tmp_path_factory.mktemp("pte") / f"{request.param}.pte"
    export_model(model, path, had=had, max_seq_len=SEQ)
    return model, PteModel(path), path


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def test_prefill_logits_match_eager(exported):
    model, pte, _ = exported
    ids = _tokens(12)
    with torch.no_grad():
        ref = model(ids[None])[0]
    torch.testing.assert_close(pte.logits(ids), ref, atol=1e-4, rtol=1e-4)


def test_incremental_decode_matches_eager(exported):
    model, pte, _ = exported
    ids = _tokens(10, seed=1)
    with torch.no_grad():
        ref = model(ids[None])[0]
    steps = [pte.forward(ids[None, :6], torch.arange(6))[0]]
    steps += [pte.forward(ids[None, i : i + 1], torch.tensor([i]))[0] for i in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps), ref, atol=1e-4, rtol=1e-4)


def test_greedy_tokens_match_eager(exported):
    model, pte, _ = exported
    prompt = _tokens(5, seed=2).tolist()
    pte.prepack()  # the cache row it writes must not leak into the generation
    got = list(pte.generate_ids(prompt, max_new_tokens=8))
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[len(prompt) :]
    assert pte.timing.decode_tokens == 7 and pte.timing.prefill_tokens == 5


def test_perplexity_matches_eager(exported):
    model, pte, _ = exported
    ids = _tokens(SEQ, seed=3)
    with torch.no_grad():
        ref = F.cross_entropy(model(ids[None])[0, :-1], ids[1:])
    got = F.cross_entropy(pte.logits(ids)[:-1], ids[1:])
    assert math.isclose(math.exp(got), math.exp(ref), rel_tol=1e-5)


def test_step_is_the_argmax_of_forward(exported):
    _, pte, _ = exported
    ids = _tokens(7, seed=5)
    full = pte.forward(ids[None, :6], torch.arange(6))[0]
    assert pte.step(ids[:6].tolist(), 0) == int(full[-1].argmax())
    one = pte.forward(ids[None, 6:], torch.tensor([6]))[0, -1]
    assert pte.step(ids[6:].tolist(), 6) == int(one.argmax())


def test_the_lm_head_runs_for_the_asked_rows_only(exported):
    model, pte, _ = exported
    ids = _tokens(9, seed=7)
    full = pte.logits(ids)
    last = np.empty((2, pte.vocab), np.float32)  # the program is asked for the last two positions' logits
    assert pte._run(ids.tolist(), range(9), last) == int(full[-1].argmax())
    torch.testing.assert_close(torch.from_numpy(last), full[-2:], atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="failed"):  # more rows than positions
        pte._run(ids[:3].tolist(), range(3), np.empty((4, pte.vocab), np.float32))
    decoder = ExportableDecoder(model, SEQ).eval()
    with torch.no_grad():
        some = decoder(ids[None], torch.arange(9), torch.tensor([2, 8]))[0]
        decoder.reset_cache()
        every = decoder(ids[None], torch.arange(9))[0]
    torch.testing.assert_close(some, every[[2, 8]], atol=1e-5, rtol=1e-5)


def test_near_zero_temperature_samples_the_greedy_tokens(exported):
    _, pte, _ = exported  # sampling reads the copied last row of logits, greedy the runtime's argmax
    prompt = _tokens(5, seed=6).tolist()
    greedy = list(pte.generate_ids(prompt, 6))
    assert list(pte.generate_ids(prompt, 6, temperature=1e-6, seed=1)) == greedy


def test_sampler_follows_the_softmax_and_the_nucleus():
    logits = np.log(np.array([1.0, 3.0], np.float32))  # probabilities 1/4, 3/4
    pick = runtime._sampler(1.0, 1.0, seed=0)
    share = sum(pick(logits) for _ in range(4000)) / 4000
    assert 0.72 < share < 0.78
    noisy = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    top_only = runtime._sampler(1.0, 1e-9, seed=0)  # a nucleus of one token is greedy
    assert all(top_only(noisy) == int(noisy.argmax()) for _ in range(5))
    # Nucleus 0.8 of (0.5, 0.3, 0.15, 0.05) keeps the first two (the mass before the third is 0.8), at odds 5:3;
    # the other 996 tokens hold ~1e-9 of the mass.
    four = np.log(np.array([0.5, 0.3, 0.15, 0.05] + [1e-12] * 996, np.float32))
    for top_p, allowed, share_of_1 in ((0.8, {0, 1}, 3 / 8), (0.81, {0, 1, 2}, 0.3 / 0.95)):
        pick = runtime._sampler(1.0, top_p, seed=0)
        draws = [pick(four) for _ in range(4000)]
        assert set(draws) == allowed and abs(draws.count(1) / 4000 - share_of_1) < 0.03


def test_sampling_is_seeded(exported):
    _, pte, _ = exported
    prompt = _tokens(4, seed=4).tolist()
    a = list(pte.generate_ids(prompt, 6, temperature=1.0, top_p=0.9, seed=7))
    b = list(pte.generate_ids(prompt, 6, temperature=1.0, top_p=0.9, seed=7))
    assert a == b and all(0 <= t < 256 for t in a)


def test_metadata(exported):
    model, pte, _ = exported
    meta = pte.metadata
    assert meta["target"] == host_target() and meta["max_seq_len"] == SEQ
    assert meta["had"] == any(layer.mlp.down_proj.online_had for layer in model.layers)
    assert meta["quant"]["w_bits"] == 4 and meta["model"]["fingerprint"] == model.identity["fingerprint"]
    assert int(runtime._runtime().load_program(pte.path).load_method("get_max_seq_len").execute([])[0]) == SEQ


def test_too_long_prompt_is_refused(exported):
    _, pte, _ = exported
    with pytest.raises(ValueError, match="max_seq_len"):
        list(pte.generate_ids(list(range(30)), max_new_tokens=8))


_RSS_AFTER_A_STEP = """
import json, re, sys
from spinquant.export.runtime import PteModel, load_library

def status():
    text = open("/proc/self/status").read()
    return {k: int(v) * 1024 for k, v in re.findall(r"^(RssAnon|RssFile):\\s+(\\d+)", text, re.M)}

load_library()
before = status()
pte = PteModel(sys.argv[1])
loaded = status()
pte.step(list(range(8)), 0)
print(json.dumps({"before": before, "loaded": loaded, "stepped": status()}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc/self/status")
def test_memory_follows_what_a_run_touches(tmp_path):
    """A program's planned memory (logits for max_seq_len rows) is committed only where a run writes, and the
    int4 weights' pages in the mapped file are handed back once prepacked: the process holds one copy."""
    import json
    import subprocess
    import sys

    cfg = QuantConfig(w_bits=4, w_group=32, a_bits=8, lm_head_bits=4)
    shape = dict(dim=1024, hidden_dim=4096, n_heads=16, n_kv_heads=4, head_dim=64, vocab_size=4096, max_seq_len=4096)
    model = prepare_model(tiny_model(seed=1, **shape), cfg, had=False, seed=0)
    path = tmp_path / "wide.pte"
    export_model(model, path, had=False, max_seq_len=4096)
    logits_bound = runtime._runtime().load_program(path).metadata("forward").output_tensor_meta(0).nbytes()
    int4_bytes = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) // 2
    assert logits_bound == 4096 * 4096 * 4 and int4_bytes > 16e6
    run = subprocess.run([sys.executable, "-c", _RSS_AFTER_A_STEP, str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rss = json.loads(run.stdout.splitlines()[-1])
    committed = rss["loaded"]["RssAnon"] - rss["before"]["RssAnon"]  # the KV cache's initial state is copied in
    assert committed < logits_bound / 2, f"loading committed {committed / 1e6:.1f} MB of planned memory"
    kept = rss["stepped"]["RssFile"] - rss["loaded"]["RssFile"]
    assert kept < int4_bytes / 2, f"{kept / 1e6:.1f} MB of the file stayed resident after prepacking"


def test_bad_paths_and_files(tmp_path, exported):
    with pytest.raises(RuntimeLoadError, match="no such .pte file"):
        PteModel(tmp_path / "missing.pte")
    junk = tmp_path / "junk.pte"
    junk.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(RuntimeLoadError, match="not a valid ExecuTorch program"):
        PteModel(junk)
    truncated = tmp_path / "truncated.pte"
    truncated.write_bytes(exported[2].read_bytes()[:4096])
    with pytest.raises(RuntimeLoadError):
        PteModel(truncated)


def test_closed_program_refuses_to_run(exported):
    pte = PteModel(exported[2])
    pte.close()
    with pytest.raises(RuntimeError, match="was closed"):
        pte.step([1, 2], 0)


def test_program_without_spinquant_metadata(tmp_path):
    from executorch.exir import to_edge

    from spinquant.export.exporter import write_atomic

    ep = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(1, 4),))
    path = tmp_path / "plain.pte"
    write_atomic(path, to_edge(ep).to_executorch().buffer)
    with pytest.raises(RuntimeLoadError, match="not made by spinquant-export"):
        PteModel(path)


def test_missing_op_library(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "_library", None)
    monkeypatch.setattr(runtime, "library_path", lambda: tmp_path / "libspinquant_et_ops.so")
    with pytest.raises(RuntimeLoadError, match="op library is missing"):
        runtime.load_library()


def test_had_flag_must_match_the_model(tmp_path):
    model = prepare_model(tiny_model(), QuantConfig(w_bits=4, w_group=32, a_bits=8), had=False)
    with pytest.raises(ExportError, match="--had"):
        export_model(model, tmp_path / "x.pte", had=True, max_seq_len=SEQ)
    with pytest.raises(ExportError, match=r"\.pte"):
        export_model(model, tmp_path / "x.bin", max_seq_len=SEQ)
    assert not list(tmp_path.iterdir())


def test_tied_ends_store_one_table():
    from spinquant.export.exportable import ExportableDecoder

    cfg, had, tied = CASES["w4a8_ends8_tied"]
    decoder = ExportableDecoder(prepare_model(tiny_model(seed=1, tie_word_embeddings=tied), cfg, had, seed=0), SEQ)
    assert [n for n, _ in decoder.named_buffers() if n.endswith("codes")] == ["table.codes"]
    assert not hasattr(decoder, "embed") and decoder.lm_head.pre is not None
