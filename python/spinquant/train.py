"""Rotation learning (SpinQuant): R1 and per-layer R2 minimising the fake-quantized model's cross-entropy.

Each step rotates the frozen fused weights with `rotation.rotate_weights` (float32, differentiable),
fake-quantizes every quantized linear's weight (RTN, straight-through), runs the model with the
activation and KV fake quantizers of `cfg` attached (and R3/R4 online Hadamards iff `had`), and takes a
Cayley SGD step on R1 and R2 (kept in float64) with a cosine learning-rate schedule.

Two exact shortcuts keep a step cheap: the embedding is rotated only on the rows the batch uses, and an
unquantized lm_head reads the un-rotated final hidden state (norms are fused, so the final RMSNorm
commutes with R1 and lm_head(norm(x R1)) with W R1 equals lm_head(norm(x R1) R1^T) with W).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .cayley import CayleySGD, orthogonality_error, qr_retraction
from .distributed import Progress, World
from .fsdp import ShardedLoss, is_sharded
from .linear_ce import linear_cross_entropy
from .model import Transformer
from .quant.apply import quant_targets, quantize_model
from .quant.config import QuantConfig
from .quant.quantizer import fake_quant_weight, search_weight_clip
from .rotation import random_rotations, rotate_weights, set_online_hadamards
from .safe_write import atomic_path

__all__ = [
    "LOSS_VERSION",
    "ORTHOGONALITY_TOL",
    "held_out_loss",
    "learn_rotations",
    "quantized_for_training",
    "rotation_loss",
    "step_gradients",
    "weight_clips",
]

ORTHOGONALITY_TOL = 1e-4  # ||R^T R - I||_F allowed for a learned rotation
CHECKPOINT_FORMAT = "spinquant-train-state-v2"
LOSS_VERSION = 2  # 2: weights fake-quantized with the evaluation's clip search (1: min/max scales)


def _check_inputs(model: Transformer, calib: Tensor, steps: int, batch_size: int, lr: float, every: int) -> None:
    if not getattr(model, "norms_fused", False):
        raise ValueError("learn_rotations needs fused norms: call spinquant.rotation.fuse_norms(model) first")
    if getattr(model, "rotated", False):
        raise ValueError("this model already has rotations merged; learn on a freshly fused model")
    if calib.dim() != 2 or calib.dtype != torch.long or calib.shape[1] < 2:
        raise ValueError(f"calib must be a LongTensor [samples, seq_len >= 2], got {calib.dtype} {tuple(calib.shape)}")
    if steps < 1 or batch_size < 1 or not 0 < lr < math.inf or every < 1:
        raise ValueError(
            f"steps, batch_size, lr and checkpoint_every must be positive, got {steps}, {batch_size}, {lr}, {every}"
        )
    if batch_size > calib.shape[0]:
        raise ValueError(f"batch_size {batch_size} exceeds the {calib.shape[0]} calibration samples")


def _batch_indices(n_samples: int, batch_size: int, step: int, seed: int) -> Tensor:
    """Sample indices of one step: consecutive slices of seeded permutations (a new one every epoch)."""
    start = step * batch_size
    idx = []
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, n_samples)
        perm = torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        idx.append(perm[offset])
    return torch.stack(idx)


def _cosine_lr(lr: float, step: int, steps: int) -> float:
    """lr * (1 + cos(pi * step / steps)) / 2: lr at step 0, 0 after the last step."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))


@contextlib.contextmanager
def quantized_for_training(model: Transformer, cfg: QuantConfig, had: bool) -> Iterator[Transformer]:
    """Within: weights frozen, R3/R4 set to `had`, activation and KV fake quantizers of `cfg` attached.

    Weights stay float (they are fake-quantized per step); on exit the quantizers are removed and the
    weights' requires_grad restored (R3/R4 stay as set).
    """
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(False)
    set_online_hadamards(model, had)
    quantize_model(model, dataclasses.replace(cfg, w_bits=16, w_method="rtn"), progress=False)
    try:
        yield model
    finally:
        for _, module in model.linears():
            module.act_quant = None
        for layer in model.layers:
            layer.self_attn.k_quant = layer.self_attn.v_quant = None
        if hasattr(model, "quant_config"):
            del model.quant_config
        for n, p in model.named_parameters():
            p.requires_grad_(frozen[n])


def _block_names(model: Transformer) -> list[list[str]]:
    return [[n for n, _ in layer.named_parameters()] for layer in model.layers]


def weight_clips(model: Transformer, cfg: QuantConfig, R1: Tensor, R2: Tensor, had: bool) -> dict[str, Tensor]:
    """MSE clip ratios of every quantized weight under rotation R1/R2 (empty without weight clip search).

    The evaluation quantizes weights with clip search; the training loss uses the same clips so that it
    optimizes what is evaluated. They change slowly with R, so `learn_rotations` refreshes them now and then.
    """
    if not (cfg.quantizes_weights and cfg.w_clip_search):
        return {}
    keys = [f"{name}.weight" for name, _ in quant_targets(model, cfg)]
    with torch.no_grad():
        base = {k: v.detach() for k, v in model.named_parameters()}
        for name in ("embed_tokens.weight", "lm_head.weight"):  # only rotated, never needed here unless quantized
            if name not in keys:
                base[name] = base[name][:0]
        w = rotate_weights(base, model.args, R1.float(), R2.float(), had)
        return {k: search_weight_clip(w[k], cfg.w_bits, cfg.w_group, cfg.w_sym, cfg.w_clip_norm) for k in keys}


def _lm_head_fast(model: Transformer, cfg: QuantConfig) -> bool:
    """True when lm_head may read the un-rotated final state (see the module docstring)."""
    head = model.lm_head
    return head.act_quant is None and not head.online_had and not (cfg.quantizes_weights and cfg.lm_head_bits == 4)


def _step_weights(
    model: Transformer, cfg: QuantConfig, uniq: Tensor, R1: Tensor, R2: Tensor, had: bool, clips: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Every weight rotated by float32 R1/R2 and fake-quantized per `cfg` (differentiable in R1, R2).

    The embedding holds only the rows `uniq`; a fast lm_head (`_lm_head_fast`) is left out, and "R1" is added
    for it to read the final state through.
    """
    base = {k: v.detach() for k, v in model.named_parameters()}
    base["embed_tokens.weight"] = base["embed_tokens.weight"][uniq]
    fast_head = _lm_head_fast(model, cfg)
    if fast_head:
        base["lm_head.weight"] = base["lm_head.weight"][:0]  # not needed: see the module docstring
    w = rotate_weights(base, model.args, R1, R2, had)
    if cfg.quantizes_weights:
        for name, _ in quant_targets(model, cfg):
            key = f"{name}.weight"
            w[key] = fake_quant_weight(w[key], cfg.w_bits, cfg.w_group, cfg.w_sym, clips.get(key, 1.0))
    if fast_head:
        del w["lm_head.weight"]
        w["R1"] = R1
    return w


def _final_state(model: Transformer, w: dict[str, Tensor], inverse: Tensor) -> Tensor:
    """What lm_head reads for token ids `inverse` (indices into the embedding rows of `w`): [B, T, dim]."""
    x = F.embedding(inverse, w["embed_tokens.weight"])
    rope = model.rope(inverse.shape[1])
    for i, (layer, names) in enumerate(zip(model.layers, _block_names(model), strict=True)):
        layer_w = {n: w[f"layers.{i}.{n}"] for n in names}
        x = torch.func.functional_call(layer, layer_w, (x, rope))
    h = model.norm(x)
    return h @ w["R1"].T if "R1" in w else model.lm_head.prepare_input(h)


def _head(model: Transformer, w: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) of lm_head as the loss uses it: the frozen one for a fast head, else the rotated one."""
    if "R1" in w:
        return model.lm_head.weight.detach(), model.lm_head.bias
    return w["lm_head.weight"], w.get("lm_head.bias")


def rotation_loss(
    model: Transformer,
    cfg: QuantConfig,
    tokens: Tensor,
    R1: Tensor,
    R2: Tensor,
    had: bool,
    clips: dict[str, Tensor] | None = None,
) -> Tensor:
    """Next-token cross-entropy of the model rotated by R1/R2 with weights fake-quantized per `cfg`.

    The model must have fused norms and its activation/KV quantizers attached (`quantized_for_training`).
    `clips` (from `weight_clips`) are per-group weight clip ratios; missing ones mean min/max scales.
    This is the plain float32 loss (whole logits, one graph); `step_gradients` is its fast form.
    """
    uniq, inverse = torch.unique(tokens, return_inverse=True)
    w = _step_weights(model, cfg, uniq, R1.float(), R2.float(), had, clips or {})
    weight, bias = _head(model, w)
    logits = F.linear(_final_state(model, w, inverse), weight, bias)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Matmuls in `dtype` (bfloat16: autocast), or nothing changed for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _micro_loss(model: Transformer, w: dict[str, Tensor], tokens: Tensor, inverse: Tensor, dtype: torch.dtype):
    """Mean next-token cross-entropy of one micro-batch, the head through `linear_cross_entropy`."""
    h = _final_state(model, w, inverse[:, :-1])
    weight, bias = _head(model, w)
    return linear_cross_entropy(h.flatten(0, 1), weight, bias, tokens[:, 1:].flatten(), dtype=dtype)


def step_gradients(
    model: Transformer,
    cfg: QuantConfig,
    tokens: Tensor,
    R1: Tensor,
    R2: Tensor,
    had: bool,
    clips: dict[str, Tensor] | None = None,
    micro_batch: int = 1,
    compute_dtype: torch.dtype = torch.float32,
) -> float:
    """`rotation_loss(...).backward()`, fast: accumulates the gradients of R1 and R2 and returns the loss.

    The weights are rotated and fake-quantized once (float32) for all `tokens`, then `micro_batch`
    sequences at a time run forward and backward up to those weights, with the matmuls in `compute_dtype`
    (autocast; the residual stream, norms and quantizer scales stay float32) and the head's cross-entropy in
    chunks (`linear_cross_entropy`); one backward through the rotations ends the step. In float32 the
    result equals the plain loss's up to summation order.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive number of sequences, got {micro_batch}")
    uniq, inverse = torch.unique(tokens, return_inverse=True)
    w = _step_weights(model, cfg, uniq, R1.float(), R2.float(), had, clips or {})
    leaves = {k: v.detach().requires_grad_() for k, v in w.items() if v.requires_grad}
    inputs = {**w, **leaves}
    n, total = tokens.shape[0], 0.0
    with _autocast(tokens.device, compute_dtype):
        for start in range(0, n, micro_batch):
            part = slice(start, start + micro_batch)
            loss = _micro_loss(model, inputs, tokens[part], inverse[part], compute_dtype)
            share = tokens[part].shape[0] / n
            (loss * share).backward()
            total += loss.item() * share
    used = [k for k, leaf in leaves.items() if leaf.grad is not None]
    torch.autograd.backward([w[k] for k in used], [leaves[k].grad for k in used])
    return total


@torch.no_grad()
def held_out_loss(model: Transformer, cfg: QuantConfig, windows: Tensor, R1: Tensor, R2: Tensor, had: bool) -> float:
    """Mean `rotation_loss` over `windows` [n, seq_len] (one window at a time), e.g. before vs after learning."""
    with quantized_for_training(model, cfg, had):
        clips = weight_clips(model, cfg, R1, R2, had)
        losses = [rotation_loss(model, cfg, w[None], R1, R2, had, clips).item() for w in windows]
    return sum(losses) / len(losses)


def _run_config(
    model: Transformer, cfg: QuantConfig, calib: Tensor, steps: int, lr: float, batch_size: int, seed: int, **kw
) -> dict:
    """What a resumable state must match to be continued."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": getattr(model, "identity", {}).get("fingerprint"),
        "quant": cfg.to_dict(),
        "calib_shape": list(calib.shape),
        "calib_sum": int(calib.sum().item()),
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        **kw,
    }


def _save_state(path: Path, state: dict) -> None:
    """torch.save through a temp file and a rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path | None, config: dict) -> dict | None:
    """A saved state for this exact run, or None (missing, unreadable, or made by another run: warned)."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: start over rather than fail the job
        warnings.warn(f"ignoring unreadable resume file {path} ({exc}); starting from step 0", stacklevel=3)
        return None
    if state.get("config") != config:
        old = state.get("config") or {}
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        warnings.warn(f"resume file {path} is from another run (differs in {diff}); starting from step 0", stacklevel=3)
        return None
    return state


def _check_orthogonal(params: list[torch.nn.Parameter], names: list[str]) -> None:
    """Re-orthonormalize (with a warning) any rotation that drifted beyond ORTHOGONALITY_TOL."""
    with torch.no_grad():
        for p, name in zip(params, names, strict=True):
            err = orthogonality_error(p)
            if not err < ORTHOGONALITY_TOL:
                warnings.warn(
                    f"{name} drifted off the orthogonal group (error {err:.2e}); re-orthonormalized", stacklevel=3
                )
                p.copy_(qr_retraction(p.detach().double()).to(p.dtype))


class NonFiniteError(ValueError):
    """Training diverged: a loss or gradient is NaN or infinite; nothing of this step is kept."""


def _check_finite(loss: float, params: list[torch.nn.Parameter], names: list[str], step: int, where) -> None:
    """Stop before a non-finite loss or gradient reaches the rotations (every rank sees the averaged gradients)."""
    bad = [n for p, n in zip(params, names, strict=True) if p.grad is not None and not torch.isfinite(p.grad).all()]
    if math.isfinite(loss) and not bad:
        return
    what = f"loss {loss:.4g}" if not math.isfinite(loss) else f"the gradient of {bad[0]}"
    kept = f"the state of step {where.saved} is kept" if where.saved else "no state was saved"
    raise NonFiniteError(f"step {step}: {what} is not finite; no result file was written ({kept}); lower --lr")


def learn_rotations(
    model: Transformer,
    cfg: QuantConfig,
    calib: Tensor,
    steps: int = 60,
    lr: float = 1.5,
    batch_size: int = 1,
    seed: int = 0,
    had: bool = True,
    init: str = "hadamard",
    momentum: float = 0.0,
    clip_every: int = 8,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 10,
    resume: bool = True,
    progress: bool = True,
    fsdp: bool = False,
    micro_batch: int = 1,
    compute_dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    grad_clip: float | None = None,
    keep_states: bool = False,
) -> tuple[Tensor, Tensor, list[float]]:
    """Learn (R1 [dim, dim], R2 [n_layers, head_dim, head_dim]) in float64; returns them and the step losses.

    `model` has fused norms (spinquant.rotation.fuse_norms) and is left with its weights untouched, R3/R4
    switched to `had` and no quantizers attached. Step i trains on calib samples chosen by a seeded
    permutation; the state is saved every `checkpoint_every` steps and at the end to `checkpoint_path`, and
    `resume` continues from it when it belongs to the same run. With weight clip search in `cfg`, the
    loss uses per-group clip ratios searched every `clip_every` steps (`weight_clips`).

    Under torch.distributed (`spinquant.distributed.process_group`) each rank trains on its slice of every
    global batch, gradients are averaged, rank 0 alone writes the state, and `fsdp` shards the frozen weights
    over the ranks (`spinquant.fsdp`; the model is left sharded), or keeps those of a model from `load_sharded`.

    Speed (`step_gradients`): each rank runs its sequences `micro_batch` at a time with matmuls in
    `compute_dtype` (bfloat16 runs 2.6-4.9x faster than float32 on CPUs with AVX512_BF16, and on GPUs) on
    `device` ("cpu" or "cuda"; the model is moved there and back). `grad_clip` scales the gradients of R1 and
    all R2 together down to that global norm when above it (the official trainer's max_grad_norm=1.0).
    `keep_states` also keeps every saved state as `<checkpoint_path>.<step>` (for held-out loss curves).
    """
    _check_inputs(model, calib, steps, batch_size, lr, checkpoint_every)
    if clip_every < 1:
        raise ValueError(f"clip_every must be positive, got {clip_every}")
    _check_speed_args(micro_batch, compute_dtype, grad_clip, fsdp)
    device = resolve_device(device)
    if fsdp and device.type != "cpu":
        raise ValueError("fsdp runs on CPU (gloo) only: on CUDA GPUs learn data parallel, without --fsdp")
    world = World.current()
    world.check_batch(batch_size)
    if fsdp and not torch.distributed.is_initialized():
        raise ValueError("fsdp needs a torch.distributed process group: launch with torchrun")
    if is_sharded(model) and not fsdp:
        raise ValueError("this model's weights are FSDP-sharded (spinquant.fsdp): learn with fsdp=True")
    path = None if checkpoint_path is None else Path(checkpoint_path)
    config = _run_config(
        model, cfg, calib, steps, lr, batch_size, seed, had=had, init=init, momentum=momentum, clip_every=clip_every
    )
    config.update(compute_dtype=str(compute_dtype).removeprefix("torch."), grad_clip=grad_clip)
    R1_init, R2_init = random_rotations(model.args, seed, init)
    R1 = torch.nn.Parameter(R1_init.to(device))
    R2 = [torch.nn.Parameter(r.to(device)) for r in R2_init]
    params = [R1, *R2]
    names = ["R1", *(f"R2[{i}]" for i in range(len(R2)))]
    opt = CayleySGD(params, lr=lr, momentum=momentum)
    history: list[float] = []
    clips: dict[str, Tensor] | None = None
    start = 0
    state = world.broadcast_object(_load_state(path, config) if resume and world.is_main else None)
    if state is not None:
        with torch.no_grad():
            for p, saved in zip(params, [state["R1"], *state["R2"]], strict=True):
                p.copy_(saved)
        opt.load_state_dict(state["optimizer"])
        history, start = list(state["history"]), state["step"]
        clips = None if state["clips"] is None else {k: v.to(device) for k, v in state["clips"].items()}
        torch.set_rng_state(state["rng"])
    world.broadcast(params)

    def save(step: int) -> None:
        if path is not None and world.is_main:
            R2_now = torch.stack([p.detach() for p in R2]).cpu()
            snapshot = {"R1": R1.detach().cpu(), "R2": R2_now, "optimizer": opt.state_dict(), "step": step}
            snapshot["clips"] = None if clips is None else {k: v.cpu() for k, v in clips.items()}
            _save_state(path, {**snapshot, "history": history, "rng": torch.get_rng_state(), "config": config})
            if keep_states:
                shutil.copyfile(path, path.with_name(f"{path.name}.{step:04d}"))

    home = next(model.parameters()).device
    model.to(device)
    try:
        with quantized_for_training(model, cfg, had), world.failures(Progress(path, start, start), steps) as where:
            sharded = ShardedLoss(model, cfg, had) if fsdp else None
            bar = tqdm(
                range(start, steps),
                initial=start,
                total=steps,
                disable=not (progress and world.is_main),
                desc="rotations",
            )
            for step in bar:
                where.step = step
                tokens = world.shard(calib[_batch_indices(calib.shape[0], batch_size, step, seed)]).to(device)
                for group in opt.param_groups:
                    group["lr"] = _cosine_lr(lr, step, steps)
                if step % clip_every == 0 or clips is None:
                    R2_now = torch.stack(R2)
                    clips = (
                        weight_clips(model, cfg, R1, R2_now, had)
                        if sharded is None
                        else sharded.weight_clips(R1, R2_now)
                    )
                opt.zero_grad(set_to_none=True)
                if sharded is None:
                    loss = step_gradients(
                        model, cfg, tokens, R1, torch.stack(R2), had, clips, micro_batch, compute_dtype
                    )
                else:
                    sharded_loss = sharded(tokens, R1, torch.stack(R2), clips)
                    sharded_loss.backward()
                    loss = sharded_loss.item()
                world.average_gradients(params)
                _check_finite(loss, params, names, step, where)
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                _check_orthogonal(params, names)
                history.append(world.average(loss))
                bar.set_postfix(loss=f"{history[-1]:.4f}")
                if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                    save(step + 1)
                    where.saved = step + 1
    finally:
        model.to(home)
    return R1.detach().cpu(), torch.stack([p.detach() for p in R2]).cpu(), history


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device to learn on: "cpu", or "cuda" (this rank's GPU under torchrun); a clear error without one."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported: use cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _check_speed_args(micro_batch: int, compute_dtype: torch.dtype, grad_clip: float | None, fsdp: bool) -> None:
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive number of sequences, got {micro_batch!r}")
    if compute_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"compute_dtype {compute_dtype} is not supported: use torch.float32 or torch.bfloat16")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be a positive gradient norm (or None for no clipping), got {grad_clip!r}")
    if fsdp and compute_dtype != torch.float32:
        raise ValueError("fsdp learns in float32 only: drop --fsdp or use --train-dtype fp32")
