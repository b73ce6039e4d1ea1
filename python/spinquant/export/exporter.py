"""Export a quantized `Transformer` to an ExecuTorch program (.pte) that calls the spinquant ops.

torch.export (dynamic sequence length) -> to_edge (custom ops kept, out variants picked by EXIR) ->
to_executorch (KV cache buffers updated in place). The program carries its metadata as constant methods:
`get_max_seq_len`, `get_vocab_size`, `get_bos_id`, `get_eos_id` (ints), `spinquant_metadata` (a uint8
tensor holding JSON: format, target, had, quant config, model identity, tokenizer ids, and the checksum of the
whole file, `spinquant.integrity`, patched in after serialization) and, for byte-level BPE
tokenizers, `spinquant_tokenizer` (uint8: the tokenizer the C++ runner encodes prompts with,
docs/TOKENIZER_FORMAT.md).
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.export import Dim

from .. import integrity
from ..safe_write import write_atomic
from .exportable import ExportableDecoder, ExportError
from .tokenizer import UnsupportedTokenizer, pack_tokenizer

# v2: int4_linear takes the residual; v3: attention ops take qkv and do RoPE; v4: int4_linear applies the RMSNorm;
# v5: int4_linear applies silu(gate) * up and the online Hadamard (down_proj)
FORMAT = "spinquant-pte-v6"
TARGETS = ("arm64", "x86_64")
METADATA_METHOD = "spinquant_metadata"
TOKENIZER_METHOD = "spinquant_tokenizer"


def host_target() -> str:
    """The --target name of this machine."""
    machine = platform.machine().lower()
    return "arm64" if machine in ("aarch64", "arm64") else "x86_64"


@dataclass
class ExportResult:
    path: Path
    seconds: float
    bytes: int
    metadata: dict


def build_metadata(model, target: str, had: bool, quant: dict | None, tokenizer=None, max_seq_len: int = 0) -> dict:
    """The JSON metadata stored in the program."""
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    tok = {}
    if tokenizer is not None:
        tok = {"bos_id": tokenizer.bos_token_id, "eos_id": tokenizer.eos_token_id, "name": tokenizer.name_or_path}
    return {
        "format": FORMAT,
        "target": target,
        "had": bool(had),
        "quant": quant or {},
        "model": getattr(model, "identity", {}) or {},
        "tokenizer": tok,
        "max_seq_len": max_seq_len,
        "vocab_size": model.args.vocab_size,
        "checksum": integrity.PLACEHOLDER,
    }


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _packed_tokenizer(tokenizer) -> bytes | None:
    """The tokenizer packed for the C++ runner, or None (with a warning) if it is of a kind the runner lacks."""
    try:
        return pack_tokenizer(tokenizer)
    except UnsupportedTokenizer as e:
        warnings.warn(f"the program carries no tokenizer, so the C++ runner needs --tokens: {e}", stacklevel=3)
        return None


def _constant_methods(meta: dict, tokenizer_blob: bytes | None = None) -> dict:
    tok = meta.get("tokenizer", {})
    methods = {
        "get_max_seq_len": int(meta["max_seq_len"]),
        "get_vocab_size": int(meta["vocab_size"]),
        "get_bos_id": int(tok.get("bos_id") if tok.get("bos_id") is not None else -1),
        "get_eos_id": int(tok.get("eos_id") if tok.get("eos_id") is not None else -1),
        METADATA_METHOD: _bytes_tensor(json.dumps(meta, sort_keys=True).encode()),
    }
    if tokenizer_blob is not None:
        methods[TOKENIZER_METHOD] = _bytes_tensor(tokenizer_blob)
    return methods


def _check_had(model, had: bool | None) -> bool:
    """The had flag in effect: the model's online Hadamards; an explicit --had/--no-had must agree with them."""
    has = any(layer.mlp.down_proj.online_had or layer.self_attn.r3 for layer in model.layers)
    if had is not None and had != has:
        want, got = ("--had", "without") if had else ("--no-had", "with")
        raise ExportError(
            f"{want} was asked but the model was rotated {got} online Hadamards (their R4 is folded into the "
            f"weights); export it with {'--no-had' if has is False else '--had'} or re-run the rotation step"
        )
    return has


def to_program(decoder: ExportableDecoder, meta: dict, xnnpack: bool = False, tokenizer_blob: bytes | None = None):
    """ExecuTorch program manager of the decoder (not yet written)."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    example = (torch.zeros(1, 4, dtype=torch.long), torch.arange(4), torch.tensor([2, 3]))  # sizes 1 specialize
    seq, rows = Dim("seq", min=1, max=decoder.max_seq_len), Dim("rows", min=1, max=decoder.max_seq_len)
    partitioners = []
    if xnnpack:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners.append(XnnpackPartitioner())
    # Float KV caches start at zero (their masked rows enter q @ K^T, so garbage there could be NaN);
    # the quantized caches are read only up to the current length.
    zero_init = InitializedMutableBufferPass(["k_cache", "v_cache"])
    with warnings.catch_warnings(), torch.no_grad():
        # Not ours to act on: the emitter's note that mutated buffers start undefined (see above), and torch
        # deprecations that ExecuTorch's own code triggers (its LLM custom ops' fakes, its passes' LeafSpec).
        warnings.filterwarnings("ignore", message="Mutation on a buffer in the model", category=UserWarning)
        warnings.filterwarnings("ignore", message="_check_is_size will be removed", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`", category=FutureWarning)
        ep = torch.export.export(decoder, example, dynamic_shapes=({1: seq}, {0: seq}, {0: rows}), strict=False)
        edge = to_edge_transform_and_lower(
            ep,
            partitioner=partitioners,
            constant_methods=_constant_methods(meta, tokenizer_blob),
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
        )
        return edge.to_executorch(ExecutorchBackendConfig(run_reinplace_pass=True, passes=[zero_init]))


def write_program(path: Path, program) -> None:
    """Write a program atomically, its checksum patched into its metadata (when the metadata asks for one)."""
    image = bytearray(program.buffer)
    if f'"{integrity.PLACEHOLDER}"'.encode() in image:
        integrity.stamp(image)
    write_atomic(path, image)


def export_model(
    model,
    path: str | Path,
    *,
    target: str | None = None,
    had: bool | None = None,
    quant: dict | None = None,
    tokenizer=None,
    max_seq_len: int = 512,
    xnnpack: bool = False,
) -> ExportResult:
    """Export a (rotated, quantized) Transformer to `path` (.pte); returns the path, seconds and metadata."""
    path = Path(path)
    if path.suffix != ".pte":
        raise ExportError(f"output {path} should end in .pte")
    start = time.perf_counter()
    target = target or host_target()
    had = _check_had(model, had)
    if quant is None and getattr(model, "quant_config", None) is not None:
        quant = model.quant_config.to_dict()
    max_seq_len = min(max_seq_len, model.args.max_seq_len)
    max_seq_len -= max_seq_len % 4
    if tokenizer is not None and len(tokenizer) > model.args.vocab_size:
        raise ExportError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {model.args.vocab_size}: it belongs to "
            "another model; pass the model's own tokenizer"
        )
    meta = build_metadata(model, target, had, quant, tokenizer, max_seq_len)
    blob = None if tokenizer is None else _packed_tokenizer(tokenizer)
    meta["tokenizer"]["packed"] = blob is not None
    decoder = ExportableDecoder(model, max_seq_len).eval()
    program = to_program(decoder, meta, xnnpack=xnnpack, tokenizer_blob=blob)
    write_program(path, program)
    return ExportResult(path, time.perf_counter() - start, path.stat().st_size, meta)
