"""Rotation files and quantized int4 checkpoints (safetensors, written atomically).

A rotation file holds R1 [dim, dim] and R2 [n_layers, head_dim, head_dim] with the identity of the model
they were learned for; loading it into another model is refused. A quantized checkpoint follows
docs/INT4_FORMAT.md: packed int4 weights with fp16 scales, everything else in fp32, and metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from .model import ModelArgs, Transformer, build_model
from .quant.config import QuantConfig
from .quant.packing import pack_weight, unpack_weight

ROTATION_FORMAT = "spinquant-rotations-v1"
CHECKPOINT_FORMAT = "spinquant-int4-v1"


class IncompatibleFileError(ValueError):
    """A rotation file or checkpoint that does not belong to this model or is not ours."""


def save_atomic(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file through a temp file and a rename: never a half-written artifact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read(path: str | Path, expected_format: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise IncompatibleFileError(f"{path} is not a readable safetensors file ({err})") from err
    if metadata.get("format") != expected_format:
        raise IncompatibleFileError(
            f"{path} has format {metadata.get('format')!r}, expected {expected_format!r}: "
            "pass a file written by spinquant"
        )
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


def load_rotations(path: str | Path, model: Transformer) -> tuple[Tensor, Tensor, dict]:
    """(R1, R2, info) of a rotation file, checked against `model`."""
    tensors, metadata = _read(path, ROTATION_FORMAT)
    check_identity(json.loads(metadata["model"]), model, path)
    return tensors["R1"], tensors["R2"], json.loads(metadata["info"])


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
    from .quant.apply import quantize_model
    from .quant.ends import quantize_ends
    from .rotation import set_online_hadamards

    tensors, metadata = _read(path, CHECKPOINT_FORMAT)
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
