"""Checks that refuse bad input before any work, in one line naming what the user typed.

`check_command(args)` validates a parsed `spinquant` command line (ranges, group sizes against the model's
channels, sequence lengths, thread counts, bits the command can emit, output paths) and raises `UsageError`;
`check_rotations` validates rotation matrices by meaning (shapes, finite, orthogonal) wherever they are loaded.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor

from .model import ModelArgs

ROTATION_TOL = 1e-3  # largest ||R^T R - I||_F accepted for a loaded R1 or R2 (float32 round-off is ~1e-5)


class UsageError(ValueError):
    """A flag value or input the command cannot use; the message names the flag and the fix."""


class InvalidRotationError(ValueError):
    """Rotation matrices of the wrong shape, non-finite, or not orthogonal."""


def orthogonality_error(R: Tensor) -> float:
    """||R^T R - I||_F in float64 (inf if R holds NaN or infinity)."""
    r = R.detach().to(torch.float64)
    if not torch.isfinite(r).all():
        return math.inf
    return torch.linalg.matrix_norm(r.T @ r - torch.eye(r.shape[-1], dtype=torch.float64)).item()


def check_rotations(R1: Tensor, R2: Tensor, args: ModelArgs, source: str) -> None:
    """Refuse R1 [dim, dim] / R2 [n_layers, head_dim, head_dim] that are misshapen, non-finite or not orthogonal."""
    want = {"R1": (args.dim, args.dim), "R2": (args.n_layers, args.head_dim, args.head_dim)}
    for name, R in (("R1", R1), ("R2", R2)):
        if tuple(R.shape) != want[name]:
            raise InvalidRotationError(
                f"{source}: {name} has shape {list(R.shape)}, the model needs {list(want[name])}: "
                "it was made for another model; learn rotations for this one with `spinquant optimize`"
            )
        if not R.dtype.is_floating_point or not torch.isfinite(R).all():
            raise InvalidRotationError(f"{source}: {name} holds NaN or infinite values; re-create the file")
    for name, R in [("R1", R1), *((f"R2[{i}]", r) for i, r in enumerate(R2))]:
        err = orthogonality_error(R)
        if not err <= ROTATION_TOL:
            raise InvalidRotationError(
                f"{source}: {name} is not orthogonal (||R^T R - I||_F = {err:.2e} > {ROTATION_TOL:g}); "
                "the file is damaged or was not made by `spinquant optimize`"
            )


# ---- command lines --------------------------------------------------------------------------------------


def _at_least(a: argparse.Namespace, attr: str, flag: str, low: float) -> None:
    value = getattr(a, attr, None)
    if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value >= low):
        raise UsageError(f"{flag} must be a number >= {low:g}, got {value}")


def _positive_float(a: argparse.Namespace, attr: str, flag: str) -> None:
    value = getattr(a, attr, None)
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a finite number > 0, got {value}")


def _existing(a: argparse.Namespace, attr: str, flag: str, folder: bool = False) -> None:
    value = getattr(a, attr, None)
    if value is None:
        return
    path = Path(value)
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        what = "folder" if folder else "file"
        hint = " (it is a folder)" if path.is_dir() else ""
        if attr == "rotation":
            from .rotation.shipped import shipped_names

            hint += f"; shipped rotations: {', '.join(shipped_names()) or 'none'}"
        raise UsageError(f"{flag} {path}: no such {what}{hint}")


def _model_args(model: str | None) -> ModelArgs:
    from . import assets
    from .model import read_args

    folder = Path(model) if model else assets.default_model_dir()
    if not (folder / "config.json").is_file():
        raise UsageError(f"--model {folder}: not a Hugging Face model folder (no config.json)")
    return read_args(folder)


def _check_groups(a: argparse.Namespace, args: ModelArgs) -> None:
    """--w-group must divide every quantized linear's input channels, --kv-group the head dimension."""
    w_group = getattr(a, "w_group", None)
    channels = sorted({args.dim, args.hidden_dim, args.n_heads * args.head_dim})
    if w_group and any(k % w_group for k in channels):
        raise UsageError(
            f"--w-group {w_group} does not divide the model's input channels {channels}: "
            f"use a divisor of {math.gcd(*channels)} (or 0 for per-channel)"
        )
    kv_group = getattr(a, "kv_group", None)
    if kv_group and args.head_dim % kv_group:
        raise UsageError(f"--kv-group {kv_group} does not divide head_dim {args.head_dim} (0 = head_dim)")


def _check_quant(a: argparse.Namespace) -> None:
    from .quant.config import check_bits

    for attr, flag in (("w_bits", "--w-bits"), ("a_bits", "--a-bits"), ("kv_bits", "--kv-bits")):
        if getattr(a, attr, None) is not None:
            try:
                check_bits(flag, getattr(a, attr))
            except ValueError as err:
                raise UsageError(str(err)) from err
    _at_least(a, "w_group", "--w-group", 0)
    _at_least(a, "kv_group", "--kv-group", 0)
    a_clip = getattr(a, "a_clip", None)
    if a_clip is not None and not 0 < a_clip <= 1:
        raise UsageError(f"--a-clip must be in (0, 1], got {a_clip}")
    _at_least(a, "gptq_samples", "--gptq-samples", 1)
    _at_least(a, "gptq_seq_len", "--gptq-seq-len", 2)


def _check_rotation_source(a: argparse.Namespace) -> None:
    """--rotation exists, is intact and holds rotations for --model's shapes (its identity is checked on load)."""
    from .checkpoint import IncompatibleFileError, read_rotations

    _existing(a, "rotation", "--rotation")
    if a.rotation is not None and getattr(a, "checkpoint", None) is None:
        try:
            R1, R2, _ = read_rotations(a.rotation)
            check_rotations(R1, R2, _model_args(a.model), str(a.rotation))
        except (IncompatibleFileError, InvalidRotationError) as err:
            raise UsageError(f"--rotation {err}") from None
    _at_least(a, "random_hadamard", "--random-hadamard", 0)


def _optimize(a: argparse.Namespace) -> None:
    from .safe_write import ROTATION, check_output

    _at_least(a, "steps", "--steps", 1)
    _at_least(a, "batch_size", "--batch-size", 1)
    _at_least(a, "seq_len", "--seq-len", 2)
    _positive_float(a, "lr", "--lr")
    _at_least(a, "checkpoint_every", "--checkpoint-every", 1)
    _positive_float(a, "dist_timeout", "--dist-timeout")
    _check_groups(a, _model_args(a.model))
    check_output(a.out, ROTATION, "--out")


def _eval(a: argparse.Namespace) -> None:
    _at_least(a, "ppl_windows", "--ppl-windows", 0)
    _at_least(a, "ppl_seq_len", "--ppl-seq-len", 2)
    _at_least(a, "zeroshot_limit", "--zeroshot-limit", -1)
    if a.checkpoint is not None:
        _existing(a, "checkpoint", "--checkpoint")
        ignored = [flag for attr, flag in _CHECKPOINT_FIXED if getattr(a, attr, None) not in (None, False)]
        if ignored:
            raise UsageError(
                f"{', '.join(ignored)} cannot change a --checkpoint (its rotation and bits are fixed); "
                "drop them, or evaluate --model with them instead (--model names the tokenizer here)"
            )
        if a.model is not None:
            _same_model(a.model, a.checkpoint)
    else:
        _check_groups(a, _model_args(a.model))


def _same_model(model: str, checkpoint: Path) -> None:
    """With --checkpoint, --model only supplies the tokenizer: refuse a folder of another model."""
    import json

    from .checkpoint import read_metadata

    saved = json.loads(read_metadata(checkpoint).get("model", "{}")).get("args", {})
    args = _model_args(model)
    if saved and (saved.get("vocab_size"), saved.get("dim")) != (args.vocab_size, args.dim):
        raise UsageError(
            f"--model {model} is not the model {checkpoint} was made from (vocab {args.vocab_size} vs "
            f"{saved.get('vocab_size')}, dim {args.dim} vs {saved.get('dim')}); with --checkpoint it names the "
            "tokenizer: pass that model's folder"
        )


# Flags of eval that a quantized checkpoint has already decided (given with --checkpoint they would be ignored).
_CHECKPOINT_FIXED = (
    ("rotation", "--rotation"),
    ("random_hadamard", "--random-hadamard"),
    ("w_bits", "--w-bits"),
    ("w_group", "--w-group"),
    ("a_bits", "--a-bits"),
    ("kv_bits", "--kv-bits"),
    ("kv_group", "--kv-group"),
    ("a_clip", "--a-clip"),
)


def _quantize(a: argparse.Namespace) -> None:
    from .quant.config import QuantConfig
    from .safe_write import CHECKPOINT, check_output

    w_bits = a.w_bits if a.w_bits is not None else QuantConfig.preset(a.precision).w_bits
    if w_bits == 16:
        raise UsageError(
            f"quantize writes quantized weights, but {'--w-bits 16' if a.w_bits else f'--precision {a.precision}'} "
            "leaves them in float: use --w-bits 2..8 (4 for spinquant-export)"
        )
    _check_groups(a, _model_args(a.model))
    check_output(a.out, CHECKPOINT, "--out", {"--rotation": a.rotation})


def _export(a: argparse.Namespace) -> None:
    from .checkpoint import read_metadata
    from .safe_write import PROGRAM, check_output

    if Path(a.output).suffix != ".pte":
        raise UsageError(f"-o/--output {a.output} should end in .pte")
    _at_least(a, "max_seq_len", "--max-seq-len", 4)
    _existing(a, "tokenizer", "--tokenizer", folder=True)
    if a.checkpoint:
        _existing(a, "checkpoint", "--checkpoint")
        if a.rotation:
            raise UsageError("--rotation applies to --model; a --checkpoint already carries its rotation")
        had = read_metadata(a.checkpoint).get("had") == "true"
        if a.had is not None and a.had != had:
            raise UsageError(
                f"{a.checkpoint} was made with had={had}; drop --{'no-' if had else ''}had "
                "or re-quantize with the other setting"
            )
    else:
        _check_rotation_source(a)
    check_output(a.output, PROGRAM, "-o/--output", {"--checkpoint": a.checkpoint, "--rotation": a.rotation})


def _run(a: argparse.Namespace) -> None:
    _existing(a, "pte", "PTE")
    _at_least(a, "max_new_tokens", "--max-new-tokens", 1)
    _at_least(a, "temperature", "--temperature", 0)
    if not 0 < a.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {a.top_p}")
    _existing(a, "tokenizer", "--tokenizer", folder=True)
    try:
        a.prompt.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = err.object[err.start : err.end]
        raise UsageError(f"--prompt is not UTF-8 text ({bad!r} at character {err.start})") from None


def _bench(a: argparse.Namespace) -> None:
    threads = [t.strip() for t in str(a.bench_threads).split(",")]
    if not all(t.isdigit() for t in threads):
        raise UsageError(f"--threads takes comma-separated counts >= 0, got {a.bench_threads!r}")
    for attr, low in (("prompt_len", 1), ("new_tokens", 1), ("runs", 1)):
        _at_least(a, attr, "--" + attr.replace("_", "-"), low)
    _at_least(a, "max_seq_len", "--max-seq-len", a.prompt_len + a.new_tokens)
    _at_least(a, "ppl_tokens", "--ppl-tokens", 2)


def _pipeline(a: argparse.Namespace) -> None:
    from .safe_write import check_writable

    if a.out_dir is not None:
        if a.out_dir.exists() and not a.out_dir.is_dir():
            raise UsageError(f"--out-dir {a.out_dir} is a file, not a folder")
        check_writable(a.out_dir / "results.md", "--out-dir")
    for attr, low in (("steps", 1), ("train_seq_len", 2), ("ppl_windows", 0), ("ppl_seq_len", 2)):
        _at_least(a, attr, "--" + attr.replace("_", "-"), low)
    for attr, low in (("zeroshot_limit", -1), ("quarot_seeds", 1), ("gptq_samples", 1), ("gptq_seq_len", 2)):
        _at_least(a, attr, "--" + attr.replace("_", "-"), low)


CHECKS = {
    "optimize": _optimize,
    "eval": _eval,
    "quantize": _quantize,
    "export": _export,
    "run": _run,
    "bench": _bench,
    "pipeline": _pipeline,
}


def check_command(a: argparse.Namespace) -> None:
    """Validate a parsed `spinquant` command line before it runs; raises UsageError."""
    _at_least(a, "threads", "--threads", 0)
    _check_quant(a)
    if a.command in ("eval", "quantize"):
        _check_rotation_source(a)
    check = CHECKS.get(a.command)
    if check is not None:
        check(a)
