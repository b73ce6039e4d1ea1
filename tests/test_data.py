"""Tests of spinquant.data: document parsing, the train/test split, windows and the token cache."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from spinquant import assets, data


class ByteTokenizer:
    """A stand-in tokenizer: one token per UTF-8 byte."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def get_vocab(self) -> dict[str, int]:
        return {f"<{i}>": i for i in range(256)}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPINQUANT_CACHE", str(tmp_path))
    data._MEMO.clear()


def _wiki(n: int) -> str:
    return "".join(
        f'<doc id="{i}" url="u{i}" title="T{i}">\nTitle {i}\n\n' + f"body {i} " * (i + 1) + "\n</doc>\n"
        for i in range(n)
    )


def test_parse_documents_strips_tags_and_keeps_titles():
    raw = _wiki(3) + '<doc id="9" url="x" title="Empty">\n\n</doc>\n'
    docs = data.parse_documents(raw)
    assert [d.title for d in docs] == ["Title 0", "Title 1", "Title 2"]
    assert docs[2].text == "Title 2\n\n" + ("body 2 " * 3).strip()
    assert all("<doc" not in d.text and "</doc>" not in d.text for d in docs)


def test_parse_documents_rejects_untagged_text():
    with pytest.raises(ValueError, match="no <doc"):
        data.parse_documents("plain text without tags")


def test_split_is_a_document_suffix_holding_the_fraction():
    docs = data.parse_documents(_wiki(40))
    split = data.split_documents(docs, 0.1)
    assert list(split.train) + list(split.test) == docs
    total = sum(len(d.text) for d in docs)
    test_chars = sum(len(d.text) for d in split.test)
    assert test_chars >= 0.1 * total
    assert test_chars - len(split.test[0].text) < 0.1 * total  # the shortest such suffix
    assert data.split_documents(docs, 0.1) == split


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        data.split_documents(data.parse_documents(_wiki(5)), fraction)


def test_wiki_split_never_overlaps():
    split = data.wiki_split()
    train, test = {d.text for d in split.train}, {d.text for d in split.test}
    assert not train & test
    test_chars = sum(len(d.text) for d in split.test)
    assert test_chars >= data.TEST_FRACTION * sum(len(d.text) for d in split.train + split.test)
    sizes = split.sizes()
    assert (sizes["train_docs"], sizes["test_docs"]) == (len(split.train), len(split.test))


def test_calibration_samples_are_seeded_train_windows():
    tok = ByteTokenizer()
    a = data.calibration_samples(tok, 4, 64, seed=1)
    assert a.shape == (4, 64) and a.dtype == torch.long
    assert torch.equal(a, data.calibration_samples(tok, 4, 64, seed=1))
    assert not torch.equal(a, data.calibration_samples(tok, 4, 64, seed=2))
    train = bytes(data.train_tokens(tok).astype(np.uint8))
    test = bytes(data.test_tokens(tok).astype(np.uint8))
    for row in a:
        window = bytes(row.to(torch.uint8).tolist())
        assert window in train and window not in test


def test_test_windows_are_consecutive_and_checked():
    tok = ByteTokenizer()
    w = data.test_windows(tok, 128, 5)
    assert w.shape == (5, 128)
    assert torch.equal(w.flatten(), torch.from_numpy(data.test_tokens(tok)[: 5 * 128].astype(np.int64)))
    assert data.test_windows(tok, 128).shape[0] == len(data.test_tokens(tok)) // 128
    with pytest.raises(ValueError, match="ask for fewer or shorter windows"):
        data.test_windows(tok, 128, 10**6)


def test_heldout_windows_spread_over_each_text():
    tok = ByteTokenizer()
    c4 = data.c4_tokens(tok)
    assert bytes(c4.astype(np.uint8)) == assets.c4_text_path().read_bytes()
    every = data.heldout_windows(tok, "c4", 256)
    assert every.shape == (len(c4) // 256, 256)
    spread = data.heldout_windows(tok, "c4", 256, 4)
    rows = [int(i) for i in np.linspace(0, len(every) - 1, 4).round()]
    assert rows[0] == 0 and rows[-1] == len(every) - 1
    assert torch.equal(spread, every[rows])
    wiki = data.heldout_windows(tok, "wiki", 256, 3)
    assert torch.equal(wiki[0], data.test_windows(tok, 256, 1)[0])  # the test part, never calibration
    with pytest.raises(ValueError, match="unknown held-out domain 'tiny'"):
        data.heldout_windows(tok, "tiny", 256)


def test_user_text_is_read_and_checked_with_one_line_errors(tmp_path):
    tok = ByteTokenizer()
    good = tmp_path / "mine.txt"
    good.write_text("héllo " * 100, encoding="utf-8")
    text = data.read_text_file(good)
    assert data.text_windows(tok, text, 64, 2, "--text mine.txt").shape == (2, 64)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    cases = [
        (lambda: data.read_text_file(tmp_path / "missing.txt"), "no such file"),
        (lambda: data.read_text_file(bad), "not UTF-8 text"),
        (lambda: data.text_windows(tok, " \n", 64), "is empty"),
        (lambda: data.text_windows(tok, "short", 64, what="--text s.txt"), "--text s.txt has 5 tokens, fewer than"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_dataset_text_comes_from_a_local_file_field(tmp_path):
    pytest.importorskip("datasets")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"body": "first row"}\n{"body": "second row"}\n{"body": ""}\n', encoding="utf-8")
    assert data.read_dataset_text(rows, "body") == "first row" + data.DOC_SEPARATOR + "second row"
    with pytest.raises(ValueError, match="has no field 'text' \\(it has body\\): name one with --text-field"):
        data.read_dataset_text(rows)
    with pytest.raises(ValueError, match="not a dataset folder or a file ending in"):
        data.read_dataset_text(tmp_path / "rows.csv")


def test_anchor_windows_are_the_end_of_the_untagged_file():
    tok = ByteTokenizer()
    w = data.anchor_windows(tok, 2, 64)
    text = re.sub(r"</?doc\b[^>]*>", "", assets.wiki_text_path().read_text(encoding="utf-8"))
    assert bytes(w.flatten().to(torch.uint8).tolist()) == text.encode("utf-8")[-128:]


def test_token_cache_round_trips_through_disk(tmp_path):
    tok = ByteTokenizer()
    ids = data.tokenize_text(tok, "some text é")
    files = list((tmp_path / "tokens").glob("*.npy"))
    assert len(files) == 1 and not list((tmp_path / "tokens").glob(".tmp-*"))
    data._MEMO.clear()
    np.testing.assert_array_equal(data.tokenize_text(tok, "some text é"), ids)
    np.testing.assert_array_equal(np.load(files[0]), np.array(list("some text é".encode()), dtype=np.int32))
