"""Pack a Hugging Face tokenizer into the bytes a program carries for the C++ runner (docs/TOKENIZER_FORMAT.md).

Only byte-level BPE tokenizers with GPT-2's split pattern and no normalizer are packed (SmolLM, GPT-2 style
models): `export/tokenizer.cpp` implements exactly that. Others raise UnsupportedTokenizer, and their programs
run from token ids (`spinquant_runner --tokens`) or from Python (`spinquant run`).
"""

from __future__ import annotations

import json
import struct

MAGIC = b"SQBPE\x00\x00\x01"  # format version 1
SPLIT_GPT2 = 1  # the only split pattern the C++ tokenizer implements


class UnsupportedTokenizer(ValueError):
    """The tokenizer is of a kind the C++ runner cannot run; the message names what differs."""


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def _check_kind(spec: dict) -> None:
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model {model.get('type')!r} is not BPE")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        problems.append("BPE with byte fallback or subword affixes")
    if spec.get("normalizer") is not None:
        problems.append(f"normalizer {spec['normalizer'].get('type')!r}")
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        problems.append(f"pre-tokenizer {pre.get('type')!r} is not ByteLevel with GPT-2's pattern and no prefix space")
    if any(t.get(k) for t in spec.get("added_tokens", []) for k in ("lstrip", "rstrip", "single_word")):
        problems.append("added tokens that strip or match whole words")
    if problems:
        raise UnsupportedTokenizer(
            "the C++ runner's tokenizer implements byte-level BPE with GPT-2's split pattern only; this tokenizer has "
            + "; ".join(problems)
        )


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids the tokenizer's post-processor puts before and after a text (e.g. a BOS token)."""
    bare = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    at = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None)
    if at is None:
        raise UnsupportedTokenizer("its post-processor changes the text's own tokens")
    return full[:at], full[at + len(bare) :]


def pack_tokenizer(tokenizer) -> bytes:
    """The packed tokenizer (little-endian, docs/TOKENIZER_FORMAT.md); UnsupportedTokenizer if it cannot be."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizer(f"{type(tokenizer).__name__} has no fast (tokenizers) backend")
    spec = json.loads(backend.to_str())
    _check_kind(spec)
    vocab: dict[str, int] = spec["model"]["vocab"]
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    to_byte = {c: b for b, c in byte_to_unicode().items()}
    n = max([*vocab.values(), *added]) + 1
    pieces = [b""] * n
    for text, i in vocab.items():
        if i in added:
            continue
        try:
            pieces[i] = bytes(to_byte[c] for c in text)
        except KeyError as e:
            raise UnsupportedTokenizer(f"vocabulary entry {text!r} is not in the byte-level alphabet") from e
    for i, t in added.items():
        pieces[i] = t["content"].encode()
    merges = []
    for m in spec["model"].get("merges", []):
        left, right = m.split(" ") if isinstance(m, str) else m
        if (out := vocab.get(left + right)) is not None:
            merges.append((vocab[left], vocab[right], out))
    prefix, suffix = _special_affixes(tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    blob = [MAGIC, struct.pack("<Iii", SPLIT_GPT2, -1 if bos is None else bos, -1 if eos is None else eos)]
    blob += [struct.pack("<I", n), struct.pack(f"<{n}I", *map(len, pieces)), *pieces]
    blob += [struct.pack("<I", len(merges)), b"".join(struct.pack("<3I", *m) for m in merges)]
    blob += [struct.pack("<I", len(added)), b"".join(struct.pack("<IB", i, t["special"]) for i, t in added.items())]
    for ids in (prefix, suffix):
        blob += [struct.pack("<I", len(ids)), struct.pack(f"<{len(ids)}I", *ids)]
    return b"".join(blob)
