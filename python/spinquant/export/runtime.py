"""Run a spinquant .pte through the ExecuTorch runtime from Python: load, forward, generate.

The op library `libspinquant_et_ops.so` is loaded once, from one canonical path (beside this package's
`__init__.py`), after the ExecuTorch runtime and before any program: loading it twice from different paths
would abort the process ("Re-registering"). Programs are opened, read and run through the library's C API
(export/program.h: ExecuTorch's Module, as in the C++ runner), which maps the file, commits planned memory only
as it is touched and skips the pybinding's per-call tensor conversions (~6 % of a decode step on 2 cores); the
pybinding (which locks a whole program in memory) only lists the registered operators.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import spinquant

from . import ops as _ops
from .exporter import FORMAT, METADATA_METHOD, TOKENIZER_METHOD, host_target

LIBRARY_NAME = "libspinquant_et_ops.so"
OPS = tuple(f"spinquant::{name}.out" for name in _ops.OPS)

_lock = threading.Lock()
_library: ctypes.CDLL | None = None


class RuntimeLoadError(RuntimeError):
    """A .pte or the op library could not be loaded; the message says why and what to do."""


def library_path() -> Path:
    """The one place the op library is loaded from: spinquant/libspinquant_et_ops.so."""
    return Path(spinquant.__file__).resolve().parent / LIBRARY_NAME


def _runtime():
    from executorch.runtime import Runtime

    return Runtime.get()


def load_library() -> ctypes.CDLL:
    """Load the op library once (after the ExecuTorch runtime, so it binds to the same libexecutorch)."""
    global _library
    with _lock:
        if _library is not None:
            return _library
        path = library_path()
        if not path.is_file():
            raise RuntimeLoadError(
                f"spinquant's ExecuTorch op library is missing: {path} does not exist. Build and install it with "
                "`pip install --no-build-isolation .` (executorch must be importable by the build), or configure "
                "CMake with -DSPINQUANT_BUILD_EXECUTORCH_OPS=ON and copy libspinquant_et_ops.so there"
            )
        runtime = _runtime()
        _library = _declare(ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL))
        _library.spinquant_et_log_errors_only()  # after the pybinding set its handler, which prints every line
        missing = [op for op in OPS if op not in runtime.operator_registry.operator_names]
        if missing:
            raise RuntimeLoadError(f"{path} loaded but did not register {missing}; rebuild it against executorch 1.5.1")
        return _library


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """The C API's signatures (export/program.h)."""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.spinquant_et_log_errors_only.restype, lib.spinquant_et_log_errors_only.argtypes = None, []
    lib.spinquant_et_verify.restype, lib.spinquant_et_verify.argtypes = ctypes.c_int, [ctypes.c_char_p]
    lib.spinquant_et_open.restype, lib.spinquant_et_open.argtypes = ptr, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
    lib.spinquant_et_load.restype, lib.spinquant_et_load.argtypes = ctypes.c_int, [ptr, ctypes.c_char_p]
    lib.spinquant_et_close.restype, lib.spinquant_et_close.argtypes = None, [ptr]
    lib.spinquant_et_vocab.restype, lib.spinquant_et_vocab.argtypes = i64, [ptr]
    lib.spinquant_et_forward.restype = ctypes.c_int
    lib.spinquant_et_forward.argtypes = [ptr, ptr, ptr, i64, ptr, i64, ctypes.POINTER(i64)]
    lib.spinquant_et_bytes.restype, lib.spinquant_et_bytes.argtypes = i64, [ptr, ctypes.c_char_p, ptr, i64]
    lib.spinquant_tok_new.restype, lib.spinquant_tok_new.argtypes = ptr, [ptr, i64]
    lib.spinquant_tok_free.restype, lib.spinquant_tok_free.argtypes = None, [ptr]
    lib.spinquant_tok_encode.restype, lib.spinquant_tok_encode.argtypes = i64, [ptr, ctypes.c_char_p, i64, ptr, i64]
    lib.spinquant_tok_decode.restype = i64
    lib.spinquant_tok_decode.argtypes = [ptr, i64, ctypes.POINTER(ctypes.c_void_p)]
    lib.spinquant_tok_eos.restype, lib.spinquant_tok_eos.argtypes = i64, [ptr]
    return lib


def set_threads(threads: int) -> None:
    """Threads the spinquant kernels use (0 = every core)."""
    load_library().spinquant_et_set_threads(ctypes.c_int(int(threads)))


def _open(path: Path) -> int:
    """A handle of the program at `path` (mapped by the op library, not read into memory)."""
    error = ctypes.c_int()
    handle = load_library().spinquant_et_open(str(path).encode(), ctypes.byref(error))
    if not handle:
        raise RuntimeLoadError(
            f"{path} is not a valid ExecuTorch program (corrupt or truncated?): ExecuTorch error 0x{error.value:x}"
        )
    return handle


def _method_bytes(handle: int, method: str) -> bytes | None:
    """The uint8 tensor a constant method of the program returns, or None if it has no such method."""
    lib = load_library()
    size = lib.spinquant_et_bytes(handle, method.encode(), None, 0)
    if size < 0:
        return None
    blob = (ctypes.c_uint8 * size)()
    lib.spinquant_et_bytes(handle, method.encode(), blob, size)
    return bytes(blob)


def _read_metadata(handle: int) -> dict:
    blob = _method_bytes(handle, METADATA_METHOD)
    if blob is None:
        raise RuntimeLoadError(
            "this .pte has no spinquant metadata: it was not made by spinquant-export; export it with spinquant-export"
        )
    try:
        meta = json.loads(blob.decode())
    except ValueError as e:
        raise RuntimeLoadError(f"the program's spinquant metadata is damaged ({e}); re-export it") from None
    if not isinstance(meta, dict):
        raise RuntimeLoadError("the program's spinquant metadata is damaged (not a JSON object); re-export it")
    return meta


def is_current(path: str | Path) -> bool:
    """True if `path` is a program this spinquant writes and can run (its format is the current one)."""
    try:
        handle = _open(Path(path))
    except Exception:  # missing, truncated, not a program, or no op library
        return False
    try:
        return _read_metadata(handle).get("format") == FORMAT
    except RuntimeLoadError:
        return False
    finally:
        load_library().spinquant_et_close(handle)


def _decode_metadata(handle: int) -> dict:
    meta = _read_metadata(handle)
    if meta.get("format") != FORMAT:
        raise RuntimeLoadError(f"unsupported .pte format {meta.get('format')!r}; re-export it with this spinquant")
    return meta


class NativeTokenizer:
    """The C++ runner's tokenizer (export/tokenizer.cpp) over packed bytes (docs/TOKENIZER_FORMAT.md)."""

    def __init__(self, blob: bytes):
        self._lib = load_library()
        self._handle = self._lib.spinquant_tok_new(blob, len(blob))  # the library keeps its own copy
        if not self._handle:
            raise RuntimeLoadError("the packed tokenizer is damaged or of another format version; re-export it")
        self.eos_token_id = int(self._lib.spinquant_tok_eos(self._handle))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with the tokenizer's BOS-style prefix and suffix."""
        data = text.encode()
        ids = np.empty(len(data) + 8, np.int64)  # a token a byte at most, plus a few BOS-style ids: one call
        n = self._lib.spinquant_tok_encode(self._handle, data, len(data), ids.ctypes.data, len(ids))
        if n > len(ids):
            ids = np.empty(n, np.int64)
            self._lib.spinquant_tok_encode(self._handle, data, len(data), ids.ctypes.data, n)
        return ids[:n].tolist()

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of token ids (special tokens are always skipped)."""
        out, at = [], ctypes.c_void_p()
        for i in ids:
            n = self._lib.spinquant_tok_decode(self._handle, int(i), ctypes.byref(at))
            out.append(ctypes.string_at(at, n) if n else b"")
        return b"".join(out).decode(errors="replace")

    def __del__(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.spinquant_tok_free(self._handle)
            self._handle = None


@dataclass
class Timing:
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0

    @property
    def prefill_tok_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_ms_per_token(self) -> float:
        return 1000.0 * self.decode_s / self.decode_tokens if self.decode_tokens else 0.0


class PteModel:
    """A loaded spinquant program: `forward(tokens, input_pos)` and `generate(...)`."""

    def __init__(self, path: str | Path, check_target: bool = True):
        path = Path(path)
        if not path.is_file():
            raise RuntimeLoadError(f"no such .pte file: {path}; create one with `spinquant-export`")
        self._lib = load_library()
        integrity = self._lib.spinquant_et_verify(str(path).encode())  # before anything parses the file
        if integrity in (2, 3):
            what = "its contents do not match its recorded checksum" if integrity == 2 else "it cannot be read"
            raise RuntimeLoadError(f"{path} is damaged: {what}; re-export it with spinquant-export")
        self._handle = _open(path)
        self.metadata = _decode_metadata(self._handle)
        if integrity == 1 and "checksum" in self.metadata:
            raise RuntimeLoadError(f"{path} is damaged: its checksum record is unreadable; re-export it")
        if check_target and self.metadata["target"] != host_target():
            raise RuntimeLoadError(
                f"{path} was exported for {self.metadata['target']} but this machine is {host_target()}; "
                f"re-export with --target {host_target()}"
            )
        error = self._lib.spinquant_et_load(self._handle, b"forward")
        if error:
            raise RuntimeLoadError(
                f"cannot load method 'forward' of {path} (ExecuTorch error 0x{error:x}): an operator is missing from "
                "this runtime (see the 'Missing operator' log line above) or the program is damaged"
            )
        self.vocab = int(self._lib.spinquant_et_vocab(self._handle))
        self._last = np.empty(self.vocab, np.float32)  # the last position's logits of a generation step
        self.path = path
        self.max_seq_len = int(self.metadata["max_seq_len"])
        self.timing = Timing()

    def tokenizer(self) -> NativeTokenizer | None:
        """The tokenizer the program carries (spinquant-export packs byte-level BPE ones), or None."""
        blob = _method_bytes(self._handle, TOKENIZER_METHOD)
        return None if blob is None else NativeTokenizer(blob)

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        """Logits [1, T, V] for tokens [1, T] at positions input_pos [T]."""
        out = np.empty((tokens.shape[-1], self.vocab), np.float32)
        self._run(tokens.reshape(-1), input_pos, out)
        return torch.from_numpy(out)[None]

    def step(self, ids: list[int], start: int) -> int:
        """The greedy next token after ids at positions start.. (no logits are copied out)."""
        return self._run(ids, range(start, start + len(ids)), None)

    def prepack(self) -> float:
        """Seconds of one 1-token forward, which makes the op library prepack the weights now instead of in the
        first prefill (the cache row it writes is rewritten by the next prefill, which starts at position 0)."""
        t0 = time.perf_counter()
        self.step([0], 0)
        return time.perf_counter() - t0

    def _run(self, ids, positions, out: np.ndarray | None) -> int:
        """Runs forward, copies the last rows of logits into out (one if out is 1-D); the last row's argmax."""
        ids = np.ascontiguousarray(ids, np.int64)
        pos = np.ascontiguousarray(positions, np.int64)
        if self._handle is None:
            raise RuntimeError(f"{self.path} was closed")
        rows = 0 if out is None else (out.shape[0] if out.ndim == 2 else 1)
        nxt, logits = ctypes.c_int64(), None if out is None else out.ctypes.data
        err = self._lib.spinquant_et_forward(
            self._handle, ids.ctypes.data, pos.ctypes.data, len(ids), logits, rows, nxt
        )
        if err:
            raise RuntimeError(f"forward of {self.path} failed with ExecuTorch error 0x{err:x}")
        return nxt.value

    def logits(self, ids: list[int] | Tensor) -> Tensor:
        """Logits [T, V] of a whole sequence, one prefill from position 0."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        if ids.shape[1] > self.max_seq_len:
            raise ValueError(f"{ids.shape[1]} tokens exceed this program's max_seq_len {self.max_seq_len}")
        return self.forward(ids, torch.arange(ids.shape[1]))[0]

    def generate_ids(
        self,
        prompt: list[int],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: set[int] | None = None,
    ) -> Iterator[int]:
        """Yield new token ids: prefill the prompt, then decode one token a step (greedy if temperature 0)."""
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        if len(prompt) + max_new_tokens > self.max_seq_len:
            raise ValueError(
                f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceed max_seq_len {self.max_seq_len}"
            )
        pick = _sampler(temperature, top_p, seed)
        greedy = pick is None  # the runtime's argmax: no logits copied out
        self.timing = Timing()
        t0 = time.perf_counter()
        nxt = self._run(prompt, range(len(prompt)), None if greedy else self._last)
        self.timing.prefill_tokens, self.timing.prefill_s = len(prompt), time.perf_counter() - t0
        pos = len(prompt)
        for i in range(max_new_tokens):
            token = nxt if greedy else pick(self._last)
            yield token
            if (stop and token in stop) or i == max_new_tokens - 1:
                return
            t0 = time.perf_counter()
            nxt = self._run([token], [pos], None if greedy else self._last)
            self.timing.decode_s += time.perf_counter() - t0
            self.timing.decode_tokens += 1
            pos += 1

    def generate(
        self,
        tokenizer,
        prompt: str,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> str:
        """Generated text (the continuation only) for a text prompt."""
        ids = tokenizer.encode(prompt)
        eos = self.metadata.get("tokenizer", {}).get("eos_id")
        stop = {eos} if eos is not None else None
        out = list(self.generate_ids(ids, max_new_tokens, temperature, top_p, seed, stop))
        return tokenizer.decode(out, skip_special_tokens=True)

    def close(self) -> None:
        """Release the program and the weights the op library prepacked from it."""
        self._release()
        if _library is not None:
            _library.spinquant_et_clear_cache()

    def _release(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.spinquant_et_close(self._handle)
        self._handle = None

    def __del__(self) -> None:
        self._release()


def _sampler(temperature: float, top_p: float, seed: int) -> Callable[[np.ndarray], int] | None:
    """Temperature + nucleus sampling with a seeded generator; None for greedy (temperature 0). numpy, not torch:
    a torch op here wakes its intra-op threads, which then spin beside the decode kernels (2.3x slower decode)."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
    if temperature == 0:
        return None
    rng = np.random.default_rng(seed)

    def pick(logits: np.ndarray) -> int:
        z = logits.astype(np.float64) / temperature
        probs = np.exp(z - z.max())
        if top_p >= 1:
            return int(rng.choice(len(probs), p=probs / probs.sum()))
        # Sort only the tokens above a threshold that falls until they hold top_p of the mass, so the nucleus is
        # among them (sorting all 49152 cost ~1 ms a token).
        total, floor = probs.sum(), 1.0
        while True:
            floor /= 16
            cand = np.flatnonzero(probs >= floor)
            if probs[cand].sum() >= top_p * total or floor == 0:
                break
        order = cand[np.argsort(-probs[cand], kind="stable")]
        sorted_p = probs[order]
        kept = sorted_p[: np.count_nonzero(np.cumsum(sorted_p) - sorted_p < top_p * total)]
        return int(order[rng.choice(len(kept), p=kept / kept.sum())])

    return pick
