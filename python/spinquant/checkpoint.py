"""Rotation files and quantized int4 checkpoints (safetensors, written atomically).

A rotation file holds R1 [dim, dim] and R2 [n_layers, head_dim, head_dim] with the identity of the model
they were learned for; loading it into another model, or matrices that are not rotations, is refused. A quantized
checkpoint follows docs/INT4_FORMAT.md: packed int4 weights with fp16 scales, everything else in fp32, and
metadata. Both record a checksum of the whole file in their metadata (`spinquant.integrity`), verified on load.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from . import integrity
from .model import ModelArgs, Transformer, build_model
from .quant.config import QuantConfig
from .quant.packing import pack_weight, unpack_weight
from .safe_write import write_atomic
from .validate import InvalidRotationError, check_rotations

ROTATION_FORMAT = "spinquant-rotations-v1"
CHECKPOINT_FORMAT = "spinquant-int4-v1"


class IncompatibleFileError(ValueError):
    """A rotation file or checkpoint that does not belong to this model or is not ours."""


def save_atomic(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file with its checksum through a temp file and a rename: never a half-written file."""
    image = bytearray(
        save({k: v.contiguous() for k, v in tensors.items()}, metadata={**metadata, "checksum": integrity.PLACEHOLDER})
    )
    integrity.stamp(image)
    return write_atomic(path, image)


def _header(image: bytes, path: Path) -> dict:
    n = int.from_bytes(image[:8], "little") if len(image) >= 8 else -1
    try:
        if not 2 <= n <= len(image) - 8:
            raise ValueError("bad header length")
        header = json.loads(image[8 : 8 + n])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        return header
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise IncompatibleFileError(f"{path} is not a readable safetensors file ({err}): truncated?") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of `path` (its header only: cheap before a long job)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        image = head + f.read(n if 2 <= n <= 100_000_000 else 0)
    meta = _header(image, path).get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def _read(path: str | Path, expected_format: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    image = path.read_bytes()
    metadata = _header(image, path).get("__metadata__") or {}
    if not isinstance(metadata, dict):
        metadata = {}
    try:  # files written before checksums have none
        integrity.verify(image, path, recorded="checksum" in metadata)
    except integrity.IntegrityError as err:
        raise IncompatibleFileError(str(err)) from None
    if metadata.get("format") != expected_format:
        raise IncompatibleFileError(
            f"{path} has format {metadata.get('format')!r}, expected {expected_format!r}: pass a file written by "
            "spinquant"
        )
    try:
        tensors = load(image)
    except (SafetensorError, OSError) as err:
        raise IncompatibleFileError(f"{path} is not a readable safetensors file ({err})") from err
    return tensors, metadata


def check_identity(saved: dict, model: Transformer, path: str | Path) -> None:
    """Refuse a file made for another model (different shapes or weights)."""
    if saved.get("fingerprint") != model.identity.get("fingerprint") or saved.get("args") != model.identity.get("args"):
        raise IncompatibleFileError(
            f"{path} was made for model {saved.get('name', '?')} ({saved.get('arch')}, fingerprint "
            f"{saved.get('fingerprint')}), not for {model.identity.get('name', '?')} (fingerprint "
            f"{model.identity.get('fingerprint')}): learn rotations for this model with `spinquant optimize`"
        )


def save_rotations(path: str | Path, model: Transformer, R1: Tensor, R2: Tensor, info: dict) -> Path:
    """Save learned R1/R2 with the model identity and `info` (config, had, steps, seed, losses)."""
    metadata = {"format": ROTATION_FORMAT, "model": json.dumps(model.identity), "info": json.dumps(info)}
    return save_atomic(path, {"R1": R1.detach().cpu(), "R2": R2.detach().cpu()}, metadata)


def read_rotations(path: str | Path) -> tuple[Tensor, Tensor, dict[str, str]]:
    """(R1, R2, metadata) of an intact rotation file, not yet checked against a model."""
    tensors, metadata = _read(path, ROTATION_FORMAT)
    if set(tensors) != {"R1", "R2"}:
        raise IncompatibleFileError(f"{path} holds {sorted(tensors)}, not R1 and R2: re-create it")
    return tensors["R1"], tensors["R2"], metadata


def load_rotations(path: str | Path, model: Transformer) -> tuple[Tensor, Tensor, dict]:
    """(R1, R2, info) of a rotation file, checked against `model`: its identity, shapes, finite, orthogonal."""
    R1, R2, metadata = read_rotations(path)
    check_identity(_json(metadata, "model", path), model, path)
    try:
        check_rotations(R1, R2, model.args, str(path))
    except InvalidRotationError as err:
        raise IncompatibleFileError(str(err)) from None
    return R1, R2, _json(metadata, "info", path)


def _json(metadata: dict[str, str], key: str, path: str | Path):
    try:
        return json.loads(metadata[key])
    except (KeyError, ValueError) as err:
        raise IncompatibleFileError(f"{path}: its metadata {key!r} is missing or damaged ({err})") from None


def save_quantized(
    path: str | Path,
    model: Transformer,
    cfg: QuantConfig,
    had: bool,
    R1: Tensor | None = None,
    R2: Tensor | None = None,
) -> Path:
    """Write a quantized model: packed weights of every int4 linear, fp32 for the rest (the 8-bit ends as their
    dequantized values, which re-quantize to the same codes, and lm_head's `pre` when it shares the table)."""
    tensors: dict[str, Tensor] = {}
    groups: dict[str, int] = {}
    quantized = {name: lin for name, lin in model.linears() if lin.wq is not None and lin.wq.bits <= 4}
    for name, param in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        if module in quantized and name.endswith(".weight"):
            qw = quantized[module].wq
            groups[module] = qw.group
            tensors.update({f"{module}.{k}": v for k, v in pack_weight(qw).items()})
        else:
            tensors[name] = param.detach().float()
    if model.lm_head.pre is not None:
        tensors["lm_head.pre"] = model.lm_head.pre.detach().float()
    if R1 is not None:
        tensors["rotation.R1"] = R1.detach().float()
    if R2 is not None:
        for i, r in enumerate(R2):
            tensors[f"rotation.layers.{i}.R2"] = r.detach().float()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "model": json.dumps(model.identity),
        "quant": json.dumps(cfg.to_dict()),
        "had": "true" if had else "false",
        "group_sizes": json.dumps(groups),
    }
    return save_atomic(path, tensors, metadata)


def load_quantized(path: str | Path) -> tuple[Transformer, QuantConfig, bool, dict[str, dict[str, Tensor]]]:
    """(model with dequantized weights and quantizers attached, config, had, packed tensors by linear name)."""
    tensors, metadata = _read(path, CHECKPOINT_FORMAT)
    try:
        return _build_quantized(tensors, metadata)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # only files without a checksum get here
        raise IncompatibleFileError(f"{path} is damaged: {type(err).__name__}: {err}; re-create it") from None


def _build_quantized(tensors: dict[str, Tensor], metadata: dict[str, str]):
    from .quant.apply import quantize_model
    from .quant.ends import quantize_ends
    from .rotation import set_online_hadamards

    identity = json.loads(metadata["model"])
    args = ModelArgs(**identity["args"])
    cfg = QuantConfig.from_dict(json.loads(metadata["quant"]))
    had = metadata["had"] == "true"
    groups: dict[str, int] = json.loads(metadata["group_sizes"])
    state = {k: v for k, v in tensors.items() if not k.startswith("rotation.")}
    head_pre = state.pop("lm_head.pre", None)
    packed: dict[str, dict[str, Tensor]] = {}
    for module, group in groups.items():
        parts = {k: state.pop(f"{module}.{k}") for k in ("qweight", "scales", "zeros") if f"{module}.{k}" in state}
        packed[module] = parts
        k_in = args.hidden_dim if module.endswith("down_proj") else args.dim
        if module.endswith("o_proj"):
            k_in = args.n_heads * args.head_dim
        state[f"{module}.weight"] = unpack_weight(parts, k_in, group, cfg.w_bits).dequantize()
    model = build_model(args, state)
    model.identity = identity
    model.norms_fused = model.rotated = True
    set_online_hadamards(model, had)
    quantize_model(model, dataclasses.replace(cfg, w_bits=16), progress=False)  # activation and KV quantizers
    model.lm_head.pre = head_pre
    quantize_ends(model, cfg)  # the 8-bit ends' codes again (the same)
    model.quant_config = cfg
    for name, lin in model.linears():
        if name in packed:
            lin.wq = unpack_weight(packed[name], lin.in_features, groups[name], cfg.w_bits)
    return model, cfg, had, packed
