"""Calibration and perplexity data from `wiki.utf8` (Wikipedia articles in `<doc ...>` tags).

The file is parsed into documents (tags stripped; each document's text starts with its title line) and split
by DOCUMENT, in file order: the shortest run of final documents holding 10% of the characters
(`TEST_FRACTION`) is the held-out test part, everything before it the calibration/train part, so calibration
never sees a test sentence. Sizes: 1877 train / 472 test documents, 1.65 M / 0.18 M characters; with the
SmolLM2 tokenizer 412,033 / 46,568 tokens (90 test windows of 512, 22 of 2048). Each part is its documents
joined by a blank line, tokenized once (memoized in process and cached on disk in `assets.cache_dir()`,
keyed by the tokenizer and the text).

`anchor_windows` reproduces the cross-check of FACTS.md: the last n x T tokens of the whole file with the
`<doc>` tags removed (they lie inside the test part). That tail is short stub articles (sea-snail species),
easy text: SmolLM2-135M fp32 scores 11.37 there, against ~19.5-21.7 for windows from the start or middle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinquant import assets

TEST_FRACTION = 0.1
DOC_SEPARATOR = "\n\n"
_DOC_RE = re.compile(r"<doc\b[^>]*>(.*?)</doc>", re.S)
_TAG_RE = re.compile(r"</?doc\b[^>]*>")


@dataclass(frozen=True)
class Document:
    """One article: its title (first line) and full text (title line included)."""

    title: str
    text: str


@dataclass(frozen=True)
class Split:
    """Documents of the calibration (train) part and the held-out test part."""

    train: tuple[Document, ...]
    test: tuple[Document, ...]

    def sizes(self) -> dict[str, int]:
        """Document and character counts of both parts."""
        return {
            "train_docs": len(self.train),
            "test_docs": len(self.test),
            "train_chars": len(join_documents(self.train)),
            "test_chars": len(join_documents(self.test)),
        }


def parse_documents(raw: str) -> list[Document]:
    """Documents of a `<doc ...>text</doc>` file, tags removed; empty documents dropped."""
    docs = []
    for body in _DOC_RE.findall(raw):
        text = body.strip()
        if text:
            docs.append(Document(title=text.split("\n", 1)[0].strip(), text=text))
    if not docs:
        raise ValueError("no <doc ...>...</doc> documents found in the text")
    return docs


def split_documents(docs: list[Document], test_fraction: float = TEST_FRACTION) -> Split:
    """Deterministic split by document: the shortest suffix of documents holding >= `test_fraction` of the
    characters is the test part, the rest the train part."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(docs) < 2:
        raise ValueError(f"{len(docs)} document(s) are too few to split off a test part")
    target = test_fraction * sum(len(d.text) for d in docs)
    n_test, chars = 0, 0
    while chars < target and n_test < len(docs) - 1:
        n_test += 1
        chars += len(docs[-n_test].text)
    return Split(train=tuple(docs[:-n_test]), test=tuple(docs[-n_test:]))


def join_documents(docs: tuple[Document, ...] | list[Document]) -> str:
    """The text of several documents, separated by a blank line."""
    return DOC_SEPARATOR.join(d.text for d in docs)


@cache
def wiki_split(test_fraction: float = TEST_FRACTION) -> Split:
    """The train/test split of the shipped `wiki.utf8`."""
    return split_documents(parse_documents(assets.wiki_text_path().read_text(encoding="utf-8")), test_fraction)


def _tokenizer_key(tokenizer: Any) -> str:
    """A stable fingerprint of a tokenizer's vocabulary and rules."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()[:16]


_MEMO: dict[tuple[str, str], np.ndarray] = {}


def tokenize_text(tokenizer: Any, text: str, disk_cache: bool = True) -> np.ndarray:
    """Token ids of `text` (no special tokens), memoized in process and cached on disk."""
    key = (_tokenizer_key(tokenizer), hashlib.sha256(text.encode("utf-8")).hexdigest()[:32])
    if key in _MEMO:
        return _MEMO[key]
    path = assets.cache_dir() / "tokens" / f"{key[0]}-{key[1]}.npy"
    if disk_cache and path.is_file():
        ids = np.load(path)
    else:
        ids = np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int32)
        if disk_cache:
            _save_atomic(path, ids)
    _MEMO[key] = ids
    return ids


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write an .npy file through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_tokens(tokenizer: Any) -> np.ndarray:
    """Token ids of the calibration (train) part."""
    return tokenize_text(tokenizer, join_documents(wiki_split().train))


def test_tokens(tokenizer: Any) -> np.ndarray:
    """Token ids of the held-out test part."""
    return tokenize_text(tokenizer, join_documents(wiki_split().test))


def calibration_samples(tokenizer: Any, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """`n_samples` random windows of `seq_len` tokens from the train part: LongTensor [n, seq_len]."""
    if n_samples < 1 or seq_len < 1:
        raise ValueError(f"n_samples and seq_len must be positive, got {n_samples}, {seq_len}")
    ids = train_tokens(tokenizer)
    if len(ids) <= seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the {len(ids)} calibration tokens")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len + 1, (n_samples,), generator=gen)
    source = torch.from_numpy(ids.astype(np.int64))
    return torch.stack([source[s : s + seq_len] for s in starts.tolist()])


def _windows(ids: np.ndarray, seq_len: int, n_windows: int | None, what: str, spread: bool = False) -> torch.Tensor:
    """Non-overlapping windows of `seq_len` tokens over `ids`: all of them if `n_windows` is None, else the first
    `n_windows` (consecutive) or, with `spread`, `n_windows` of them spread evenly from the start to the end."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    available = len(ids) // seq_len
    n = available if n_windows is None else n_windows
    if n < 1 or n > available:
        raise ValueError(
            f"{what} has {len(ids)} tokens = {available} windows of {seq_len}; asked for {n_windows}: "
            "ask for fewer or shorter windows"
        )
    all_windows = torch.from_numpy(ids[: available * seq_len].astype(np.int64)).view(available, seq_len)
    if not spread:
        return all_windows[:n]
    return all_windows[np.linspace(0, available - 1, n).round().astype(np.int64)]


def test_windows(tokenizer: Any, seq_len: int, n_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows of the held-out test part: LongTensor [n, seq_len]."""
    return _windows(test_tokens(tokenizer), seq_len, n_windows, "the test part")


HELDOUT_DOMAINS = ("wiki", "c4")


def c4_tokens(tokenizer: Any) -> np.ndarray:
    """Token ids of `c4.utf8` (web pages): held out whole, no calibration sample is ever drawn from it."""
    return tokenize_text(tokenizer, assets.c4_text_path().read_text(encoding="utf-8"))


def heldout_windows(tokenizer: Any, domain: str, seq_len: int, n_windows: int | None = None) -> torch.Tensor:
    """Perplexity windows of a held-out domain ("wiki": the test part of wiki.utf8, "c4": all of c4.utf8):
    every window if `n_windows` is None, else `n_windows` spread evenly over the text. LongTensor [n, seq_len]."""
    sources = {"wiki": test_tokens, "c4": c4_tokens}
    if domain not in sources:
        raise ValueError(f"unknown held-out domain {domain!r}; choose from {', '.join(HELDOUT_DOMAINS)}")
    return _windows(sources[domain](tokenizer), seq_len, n_windows, f"the {domain} held-out text", spread=True)


def text_windows(tokenizer: Any, text: str, seq_len: int, n_windows: int | None = None, what: str = "the text"):
    """Perplexity windows of any text (e.g. the user's own): as `heldout_windows`, cached like the others."""
    if not text.strip():
        raise ValueError(f"{what} is empty: give a file with text in it")
    ids = tokenize_text(tokenizer, text)
    if len(ids) < seq_len:
        raise ValueError(
            f"{what} has {len(ids)} tokens, fewer than one window of {seq_len}: give more text or shorter windows"
        )
    return _windows(ids, seq_len, n_windows, what, spread=True)


def read_text_file(path: str | Path) -> str:
    """A plain UTF-8 text file's contents; a one-line ValueError for a missing, unreadable or non-UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--text {path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--text {path}: not UTF-8 text (byte {err.start}): convert it to UTF-8 first") from None


_DATASET_BUILDERS = {".arrow": "arrow", ".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def read_dataset_text(path: str | Path, field: str = "text") -> str:
    """The `field` column of a local dataset (an .arrow, .parquet or .jsonl file, or a `save_to_disk` folder),
    read with `datasets`, its rows joined by a blank line; one-line ValueErrors for what is wrong."""
    import datasets

    path = Path(path)
    datasets.disable_progress_bars()
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[next(iter(ds))]
    elif path.suffix in _DATASET_BUILDERS:
        if not path.is_file():
            raise ValueError(f"--dataset {path}: no such file")
        ds = datasets.load_dataset(_DATASET_BUILDERS[path.suffix], data_files=str(path), split="train")
    else:
        kinds = ", ".join(_DATASET_BUILDERS)
        raise ValueError(f"--dataset {path}: not a dataset folder or a file ending in {kinds}")
    if field not in ds.column_names:
        columns = ", ".join(ds.column_names)
        raise ValueError(f"--dataset {path} has no field {field!r} (it has {columns}): name one with --text-field")
    rows = [t for t in ds[field] if isinstance(t, str) and t.strip()]
    if not rows:
        raise ValueError(f"--dataset {path}: field {field!r} holds no text")
    return DOC_SEPARATOR.join(rows)


def anchor_windows(tokenizer: Any, n_windows: int = 8, seq_len: int = 512) -> torch.Tensor:
    """FACTS.md's cross-check windows: the last n x seq_len tokens of wiki.utf8 with <doc> tags removed."""
    text = _TAG_RE.sub("", assets.wiki_text_path().read_text(encoding="utf-8"))
    ids = tokenize_text(tokenizer, text)
    if len(ids) < n_windows * seq_len:
        raise ValueError(f"wiki.utf8 has only {len(ids)} tokens, fewer than {n_windows} x {seq_len}")
    return _windows(ids[len(ids) - n_windows * seq_len :], seq_len, n_windows, "the anchor text")


# Not pytest tests, despite the names: keep them uncollected when a test module imports them.
test_tokens.__test__ = False  # type: ignore[attr-defined]
test_windows.__test__ = False  # type: ignore[attr-defined]
