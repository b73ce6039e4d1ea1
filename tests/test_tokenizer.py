"""The tokenizer a program carries for the C++ runner (export/tokenizer.cpp, docs/TOKENIZER_FORMAT.md): the same
ids and text as the Hugging Face tokenizer on real text, clear refusals, and text generation in the runner."""

from __future__ import annotations

import struct
import subprocess

import pytest

pytest.importorskip("executorch")

from native_build import arm64_tools, build_runner, qemu  # noqa: E402
from spinquant import assets  # noqa: E402
from spinquant.cli import main  # noqa: E402
from spinquant.export.cli import prepare_model  # noqa: E402
from spinquant.export.exporter import export_model  # noqa: E402
from spinquant.export.runtime import NativeTokenizer, PteModel, RuntimeLoadError  # noqa: E402
from spinquant.export.tokenizer import MAGIC, UnsupportedTokenizer, pack_tokenizer  # noqa: E402
from spinquant.model import tiny_model  # noqa: E402
from spinquant.quant.config import QuantConfig  # noqa: E402

TEXTS = ("wiki", "c4", "code", "technical", "multilingual")
AWKWARD = [
    "",
    " ",
    "  hello",
    "a\n\n b",
    "x  \n",
    "tabs\t\tand  spaces   ",
    "don't 'S 're 've 'll 'd 'm 's 't",
    "<|im_start|>user\nhi<|im_end|><|im_end|>",
    "naïve café 東京 ١٢٣ Ⅻ ² ⅓",  # letters, decimal / letter / other numbers of other scripts
    "\u00a0 x\u001f y\u2028z\u3000 w",  # no-break and ideographic spaces, a line separator; U+001F is not \s
    "\x04z\x06 \xc0",  # control bytes and a byte value the vocabulary lacks
    "emoji 😀👍🏽 and e\u0301 combining",
    "1234567 3.14 x²",
]


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(assets.default_model_dir()))


@pytest.fixture(scope="module")
def native(hf):
    return NativeTokenizer(pack_tokenizer(hf))


def _chunks(name: str, size: int = 3000, count: int = 60) -> list[str]:
    text = (assets.wiki_text_path().parent / f"{name}.utf8").read_text()
    step = max(size, len(text) // count)
    return [text[i : i + size] for i in range(0, len(text), step)][:count]


@pytest.mark.parametrize("name", TEXTS)
def test_same_ids_and_text_as_hugging_face(hf, native, name):
    for chunk in _chunks(name):
        ids = hf.encode(chunk)
        assert native.encode(chunk) == ids
        assert native.decode(ids) == hf.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("text", AWKWARD)
def test_awkward_text(hf, native, text):
    assert native.encode(text) == hf.encode(text)


def test_refuses_other_tokenizer_kinds(hf):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(UnsupportedTokenizer, match="model 'WordPiece' is not BPE.*pre-tokenizer 'Whitespace'"):
        pack_tokenizer(PreTrainedTokenizerFast(tokenizer_object=wordpiece))
    normalized = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    normalized.normalizer = normalizers.NFC()
    with pytest.raises(UnsupportedTokenizer, match="normalizer 'NFC'"):
        pack_tokenizer(PreTrainedTokenizerFast(tokenizer_object=normalized))


def test_refuses_damaged_bytes(hf):
    blob = pack_tokenizer(hf)
    for bad in (blob[:-3], blob + b"\0", b"SQBPE\0\0\x02" + blob[8:], blob[:20]):
        with pytest.raises(RuntimeLoadError, match="damaged or of another format version"):
            NativeTokenizer(bad)
    n = struct.unpack_from("<I", blob, len(MAGIC) + 12)[0]
    lengths_end = len(MAGIC) + 16 + 4 * n
    merges_at = lengths_end + sum(struct.unpack_from(f"<{n}I", blob, len(MAGIC) + 16))
    bad_merge = blob[: merges_at + 4] + struct.pack("<I", n) + blob[merges_at + 8 :]  # an id past the vocabulary
    with pytest.raises(RuntimeLoadError):
        NativeTokenizer(bad_merge)


# ---- in a program, and in the C++ runner ------------------------------------------------------------------

PROMPT = "The capital of France is"
NEW = 12


@pytest.fixture(scope="module")
def program(hf, tmp_path_factory):
    """A tiny random model with SmolLM2's vocabulary, exported with its tokenizer."""
    cfg = QuantConfig(w_bits=4, w_group=32, a_bits=8)
    model = prepare_model(tiny_model(seed=3, vocab_size=len(hf)), cfg, had=True)
    path = tmp_path_factory.mktemp("tok") / "tiny.pte"
    export_model(model, path, had=True, tokenizer=hf, max_seq_len=64)
    return path


def test_program_carries_its_tokenizer(hf, program):
    pte = PteModel(program)
    assert pte.metadata["tokenizer"]["packed"] is True
    tok = pte.tokenizer()
    assert tok.encode(PROMPT) == hf.encode(PROMPT) and tok.eos_token_id == hf.eos_token_id
    assert pte.generate(tok, PROMPT, NEW) == pte.generate(hf, PROMPT, NEW)


def test_program_without_a_packable_tokenizer(hf, tmp_path, capsys):
    from tokenizers import Tokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    other = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    other.normalizer = normalizers.NFC()
    model = prepare_model(tiny_model(seed=3, vocab_size=len(hf)), QuantConfig(w_bits=4, w_group=32), had=False)
    with pytest.warns(UserWarning, match="carries no tokenizer, so the C\\+\\+ runner needs --tokens"):
        export_model(model, tmp_path / "m.pte", tokenizer=PreTrainedTokenizerFast(tokenizer_object=other))
    pte = PteModel(tmp_path / "m.pte")
    assert pte.tokenizer() is None and pte.metadata["tokenizer"]["packed"] is False
    with pytest.raises(SystemExit):
        main(["run", str(tmp_path / "m.pte"), "--prompt", PROMPT])
    assert "carries no tokenizer and names no folder here; pass --tokenizer" in capsys.readouterr().err


def test_spinquant_run_uses_the_program_tokenizer(hf, program, capsys):
    main(["run", str(program), "--prompt", PROMPT, "--max-new-tokens", str(NEW)])
    assert capsys.readouterr().out == PROMPT + PteModel(program).generate(hf, PROMPT, NEW) + "\n"


def _runner_text(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert b"decode_ms_per_token" in res.stderr
    return res.stdout.decode(errors="replace")


def _prompt_args(path, *extra: str) -> list[str]:
    return [str(path), "--prompt", PROMPT, "--max-new", str(NEW), "--threads", "2", *extra]


def test_runner_generates_text(hf, program):
    runner = build_runner()
    pte = PteModel(program)
    want = PROMPT + pte.generate(hf, PROMPT, NEW) + "\n"
    assert _runner_text([str(runner), *_prompt_args(program)]) == want
    assert _runner_text([str(runner), *_prompt_args(program, "--runs", "3")]) == want
    sampled = [_runner_text([str(runner), *_prompt_args(program, "--temperature", "1.5", "--seed", s)]) for s in "112"]
    assert sampled[0] == sampled[1] != sampled[2]  # seeded: same seed, same text
    assert sampled[0].startswith(PROMPT) and sampled[0] != want


def test_runner_needs_a_tokenizer_for_text(tmp_path):
    runner = build_runner()
    path = tmp_path / "plain.pte"
    export_model(prepare_model(tiny_model(seed=3), QuantConfig(w_bits=4, w_group=32), had=False), path)
    res = subprocess.run([str(runner), *_prompt_args(path)], capture_output=True, text=True)
    assert res.returncode == 1 and "carries no tokenizer" in res.stderr and "--tokens" in res.stderr
    res = subprocess.run([str(runner), str(path)], capture_output=True, text=True)
    assert res.returncode == 2 and "give either --prompt or --tokens" in res.stderr


@arm64_tools
@pytest.mark.parametrize("cpu", ["max", "cortex-a72"])
def test_arm64_runner_generates_the_same_text(hf, program, cpu):
    runner = build_runner(arm64=True)
    pte = PteModel(program)
    want = PROMPT + pte.generate(hf, PROMPT, NEW) + "\n"
    assert _runner_text([*qemu(cpu), str(runner), *_prompt_args(program)]) == want
