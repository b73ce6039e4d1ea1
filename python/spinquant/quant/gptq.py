"""GPTQ (Frantar et al., 2023): error-compensating weight quantization from calibration Hessians.

`gptq_quantize` handles one weight matrix; `gptq_quantize_model` walks the decoder block by block on cached
hidden states, "true-sequential": q/k/v (one Hessian, rows stacked), then o_proj, then gate/up, then
down_proj, each seeing inputs produced by the already quantized sub-layers before it (each sub-layer runs
once per block); the quantized block's output feeds the next block. Group scales use the RTN quantizer's
rules (fp16 scales, optional clip search); with `act_order` they are computed up front ("static groups") so
the stored groups stay contiguous.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .config import QuantConfig
from .quantizer import (
    QuantizedWeight,
    _group_view,
    check_weight_args,
    dequantize_codes,
    make_quantized_weight,
    one_thread,
    quant_params,
    quantize_codes,
    search_params,
    set_weight,
    weight_group_size,
)

STAGES = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
          ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))  # fmt: skip
_MAX_DAMP_RETRIES = 4


class HessianAccumulator:
    """Running H = 2 X^T X / n over the rows of the inputs a linear layer sees."""

    def __init__(self, k: int):
        self.sum = torch.zeros(k, k)
        self.count = 0

    def add(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, self.sum.shape[0]).float()
        self.sum.addmm_(x.T, x)
        self.count += x.shape[0]

    def hessian(self) -> Tensor:
        if self.count == 0:
            raise ValueError("no calibration inputs reached this layer; pass at least one calibration sample")
        return self.sum * (2.0 / self.count)


def _upper_inverse_cholesky(h: Tensor, damp: float) -> Tensor:
    """Upper U with U^T U = (H + damp * mean(diag H) * I)^-1, float64; retries with 10x more damping.

    With J the order reversal and J H J = L L^T: U = J L^-1 J (cheaper than inverting H, then factoring).
    """
    h = h.double()
    eye = torch.eye(h.shape[0], dtype=torch.float64)
    mean_diag = h.diagonal().mean()
    for attempt in range(_MAX_DAMP_RETRIES + 1):
        damped = h + (damp * 10**attempt) * mean_diag * eye
        lower, info = torch.linalg.cholesky_ex(damped.flip(0, 1))
        if info == 0:
            return torch.linalg.solve_triangular(lower, eye, upper=False).flip(0, 1)
    worst = damp * 10**_MAX_DAMP_RETRIES
    raise ValueError(f"the Hessian is not positive definite even with damping {worst:g}; check the inputs")


def _group_params(w: Tensor, bits: int, sym: bool, clip_search: bool, norm: float) -> tuple[Tensor, Tensor | None]:
    """(scale, zero) per row of w [N, g] ([N, 1] each), as RTN would pick them."""
    if clip_search:
        return search_params(w, bits, sym, norm=norm)
    return quant_params(w, bits, sym, 1.0, fp16_scale=True)


def gptq_quantize(
    w: Tensor,
    hessian: Tensor,
    bits: int,
    group: int = 0,
    sym: bool = True,
    clip_search: bool = True,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = False,
    clip_norm: float = 2.0,
) -> QuantizedWeight:
    """GPTQ of one [N, K] weight given H [K, K] of its inputs (dead columns, damping, lazy block updates)."""
    check_weight_args(w, bits)
    n, k = w.shape
    if hessian.shape != (k, k):
        raise ValueError(f"Hessian of shape {tuple(hessian.shape)} does not match a weight with K={k} inputs")
    group = weight_group_size(k, group)
    with torch.no_grad():
        w = w.detach().float().clone()
        h = hessian.detach().float().clone()
        dead = h.diagonal() == 0
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
        n_groups = math.ceil(k / group)
        scales, zeros = torch.ones(n, n_groups), None if sym else torch.zeros(n, n_groups)
        static = act_order or group == k
        if static:
            s, z = _group_params(_group_view(w, group), bits, sym, clip_search, clip_norm)
            scales = s.squeeze(-1)
            zeros = None if sym else z.squeeze(-1)
            block = max(block, 1)
        else:
            block = group * max(1, block // group)  # blocks start at group boundaries
        perm = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else torch.arange(k)
        w, h = w[:, perm], h[perm][:, perm]
        hinv = _upper_inverse_cholesky(h, damp).float()
        groups = (perm // group).tolist()
        # Column by column on transposed copies ([K, N]): a column of W is then a contiguous row.
        q, scales_t = torch.zeros(k, n), scales.T.contiguous()
        zeros_t = None if zeros is None else zeros.T.contiguous()
        for i1 in range(0, k, block):
            i2 = min(i1 + block, k)
            w1, err1, hinv1 = w[:, i1:i2].T.contiguous(), torch.zeros(i2 - i1, n), hinv[i1:i2, i1:i2]
            with one_thread():  # many small ops
                for i in range(i2 - i1):
                    g = groups[i1 + i]
                    if not static and (i1 + i) % group == 0:
                        s, z = _group_params(w1[i : i + group].T, bits, sym, clip_search, clip_norm)
                        scales_t[g] = s[:, 0]
                        if zeros_t is not None:
                            zeros_t[g] = z[:, 0]
                    col = w1[i]
                    s, z = scales_t[g], None if zeros_t is None else zeros_t[g]
                    qc = quantize_codes(col, s, z, bits)
                    q[i1 + i] = qc
                    e = (col - dequantize_codes(qc, s, z)) / hinv1[i, i]
                    w1[i + 1 :].addr_(hinv1[i, i + 1 :], e, alpha=-1.0)
                    err1[i] = e
            w[:, i2:].addmm_(err1.T, hinv[i1:i2, i2:], alpha=-1.0)
        q, scales = q.T[:, torch.argsort(perm)], scales_t.T.contiguous()
        zeros = None if zeros_t is None else zeros_t.T.contiguous()
        return make_quantized_weight(q, scales, zeros, group, bits, sym)


class _StopForward(Exception):
    """Raised by a capture hook once the input it needs is recorded."""


def _input_of(module: nn.Module, run: Callable[[], object]) -> Tensor:
    """The input `module` receives while `run()` executes; run stops right there."""
    seen = []

    def hook(mod: nn.Module, args: tuple) -> None:
        seen.append(args[0])
        raise _StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        with contextlib.suppress(_StopForward):
            run()
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"{type(module).__name__} was not called")
    return seen[0]


def _hessian(module: nn.Module, inputs: list[Tensor]) -> Tensor:
    """H of what `module`'s weight multiplies (its input after online Hadamard / quantizer), over all batches."""
    acc = HessianAccumulator(module.in_features)
    for x in inputs:
        acc.add(module.prepare_input(x.float()))
    return acc.hessian()


def _quantize_stage(modules: list[nn.Module], hessian: Tensor, cfg: QuantConfig) -> None:
    """GPTQ of linears sharing one input (rows stacked: GPTQ treats rows independently), then write back."""
    stacked = torch.cat([m.weight.detach() for m in modules])
    qw = gptq_quantize(
        stacked, hessian, cfg.w_bits, cfg.w_group, cfg.w_sym, cfg.w_clip_search,
        cfg.gptq_damp, cfg.gptq_block, cfg.gptq_act_order, cfg.w_clip_norm,
    )  # fmt: skip
    start = 0
    for m in modules:
        rows = slice(start, start + m.out_features)
        zeros = None if qw.zeros is None else qw.zeros[rows]
        set_weight(m, QuantizedWeight(qw.codes[rows], qw.scales[rows], zeros, qw.group, qw.bits, qw.sym))
        start += m.out_features


def _check_calib(tokens: Tensor, vocab_size: int) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"calibration tokens must be a LongTensor [samples, seq_len], got {shape}")
    if tokens.numel() == 0 or int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
        raise ValueError(f"calibration tokens must be non-empty ids in [0, {vocab_size})")


def gptq_quantize_model(
    model: nn.Module, cfg: QuantConfig, calib_tokens: Tensor, progress: bool = True, batch_size: int = 8
) -> nn.Module:
    """GPTQ every decoder linear (and lm_head at cfg.lm_head_bits 4) in place, block by block."""
    from tqdm.auto import tqdm

    _check_calib(calib_tokens, model.args.vocab_size)
    with torch.no_grad():
        rope = model.rope(calib_tokens.shape[1])
        hidden = [model.embed_tokens(t) for t in calib_tokens.split(batch_size)]
        for block in tqdm(model.layers, desc=f"GPTQ {cfg}", disable=not progress, unit="layer"):
            hidden = _quantize_block(block, hidden, rope, cfg)
        if cfg.lm_head_bits == 4:
            normed = [model.norm(x) for x in hidden]
            _quantize_stage([model.lm_head], _hessian(model.lm_head, normed), cfg)
    return model


def _quantize_block(block: nn.Module, hidden: list[Tensor], rope: tuple[Tensor, Tensor], cfg: QuantConfig) -> list:
    """GPTQ of one pre-norm block's STAGES in order, each stage's inputs computed once with the stages before it
    already quantized (Block.forward split at the stage boundaries); returns the quantized block's outputs.
    The forward runs its matmuls in cfg.gptq_dtype; Hessians and the solve stay in fp32."""
    attn, mlp = block.self_attn, block.mlp

    def forward() -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.gptq_dtype == "bf16")

    def stage(names: tuple[str, ...], inputs: list[Tensor]) -> None:
        modules = [block.get_submodule(name) for name in names]
        _quantize_stage(modules, _hessian(modules[0], inputs), cfg)

    normed = [block.input_layernorm(x) for x in hidden]
    stage(STAGES[0], normed)
    with forward():
        heads = [_input_of(attn.o_proj, lambda n=n: attn(n, rope)) for n in normed]
    stage(STAGES[1], heads)
    with forward():
        mid = [x + attn.o_proj(h).float() for x, h in zip(hidden, heads, strict=True)]
    normed = [block.post_attention_layernorm(x) for x in mid]
    stage(STAGES[2], normed)
    with forward():
        gated = [_input_of(mlp.down_proj, lambda n=n: mlp(n)) for n in normed]
    stage(STAGES[3], gated)
    with forward():
        return [x + mlp.down_proj(g).float() for x, g in zip(mid, gated, strict=True)]
