"""An export-friendly decoder built from a (rotated, quantized) `spinquant.model.Transformer`.

`forward(tokens [1, T] int64, input_pos [T] int64, logit_rows [R] int64) -> logits [1, R, V]` runs T consecutive
positions (prefill when T > 1, one decode step when T = 1) against a KV cache held as mutable buffers, updated in
place, and computes the lm_head only for the rows logit_rows (indices into the T positions): generation asks for the
last one (a prompt's other positions would cost a [T, V] GEMM nobody reads), perplexity for all of them. Weights
of quantized linears are buffers in the int4 storage layout of docs/INT4_FORMAT.md and run through
`spinquant::int4_linear` (activations quantized per token inside the op; q/k/v and gate/up each share one
call, which also applies the RMSNorm before them; down_proj's call applies silu(gate) * up and, for had, R4 to
its input; o_proj and down_proj add the residual stream in the op), so a layer is five runtime ops with or
without the online Hadamards (R3 on q/k, after RoPE, runs inside the attention op). The KV cache is float32
(`spinquant::attention`) or the 4/8-bit layout of `spinquant::kv_attention`; either op takes the q/k/v
projection's output as it is and does the RoPE, the cache update and the attention. The 8-bit ends (quant.ends)
run through `spinquant::int8_embedding` and `spinquant::int8_linear`; a table shared by both is one buffer.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinquant.hadamard import base_hadamard
from spinquant.model import QLinear, Transformer
from spinquant.quant.packing import pack_int4
from spinquant.quant.quantizer import ActQuantizer, KVQuantizer

from . import ops as _ops  # noqa: F401  (registers torch.ops.spinquant)
from .ops import kv_cache_layout

sq = torch.ops.spinquant


Norm = tuple[Tensor, float]  # an RMSNorm (weight, eps) applied to a linear's input inside the op


class ExportError(ValueError):
    """The model holds something the exporter cannot express; the message names it and the fix."""


def _act_params(name: str, quantizer) -> tuple[int, float]:
    """(act_bits, act_clip) of a linear's input quantizer; the kernels do per-token asymmetric only."""
    if quantizer is None:
        return 16, 1.0
    if not isinstance(quantizer, ActQuantizer) or quantizer.sym or quantizer.group > 0 or quantizer.bits > 8:
        raise ExportError(
            f"{name}: activation quantizer {quantizer!r} is not supported by the int4 kernels; "
            "use per-token asymmetric activations (QuantConfig a_sym=False)"
        )
    return int(quantizer.bits), float(quantizer.clip)


def _hadamard_base(n: int) -> Tensor:
    k, hk = base_hadamard(n)
    return hk.reshape(k, k).contiguous()


def float_linear(lin: nn.Linear) -> nn.Linear:
    """A frozen fp32 nn.Linear with lin's weight and bias."""
    out = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    out.load_state_dict({k: v.detach().float() for k, v in lin.state_dict().items()})
    return out.requires_grad_(False)


class ExportLinear(nn.Module):
    """A QLinear for export: int4 storage buffers + int4_linear, or a float32 weight; optional online Hadamard."""

    def __init__(self, name: str, lin: QLinear):
        super().__init__()
        self.in_features = lin.in_features
        self.act_bits, self.act_clip = _act_params(name, lin.act_quant)
        self.online_had = bool(lin.online_had)
        if self.online_had:
            self.register_buffer("hk", _hadamard_base(lin.in_features))
        wq = lin.wq
        self.quantized = wq is not None
        if wq is None:  # a plain float linear (e.g. lm_head kept in full precision), open to other quantizers
            if self.act_bits < 16:
                raise ExportError(f"{name}: activations are quantized but the weight is not; quantize it too")
            self.fp = float_linear(lin)
            return
        self.bias = None if lin.bias is None else nn.Buffer(lin.bias.detach().float().clone())
        if wq.bits > 4:
            raise ExportError(f"{name}: {wq.bits}-bit weights are not supported by the int4 kernels (use w_bits<=4)")
        codes = wq.codes + (8 - 2 ** (wq.bits - 1)) if wq.sym else wq.codes
        self.group = int(wq.group)
        self.qweight = nn.Buffer(pack_int4(codes.contiguous()))
        self.scales = nn.Buffer(wq.scales.contiguous())
        self.zeros = None if wq.sym else nn.Buffer(wq.zeros.contiguous())

    def forward(self, x: Tensor, residual: Tensor | None = None, norm: Norm | None = None, glu: bool = False) -> Tensor:
        """self(h) (+ residual) of h = x, rms_norm(x) if norm, then silu(gate) * up of h's halves if glu.

        The norm, the glu, the online Hadamard and the residual add all run inside the one int4 op.
        """
        if not self.quantized:
            if norm is not None:
                x = sq.rms_norm(x, *norm)
            if glu:
                x = sq.silu_mul(x)
            if self.online_had:
                x = sq.hadamard(x, self.hk)
            y = self.fp(x)
            return y if residual is None else residual + y
        weight, eps = norm if norm is not None else (None, 0.0)
        return sq.int4_linear(
            x, self.qweight, self.scales, self.zeros, self.bias, self.group, self.act_bits, self.act_clip, residual,
            weight, eps, glu, self.hk if self.online_had else None,
        )  # fmt: skip


class Int8Table(nn.Module):
    """An int8 table in the storage of kernels/include/spinquant/int8.h: codes, float32 scales, row sums."""

    def __init__(self, name: str, wq):
        super().__init__()
        if wq.bits != 8 or not wq.sym or wq.group != wq.shape[1]:
            raise ExportError(f"{name}: only per-row symmetric int8 tables are exported, got {wq.bits} bits")
        codes = (wq.codes.to(torch.int16) - 128).to(torch.int8)
        self.codes = nn.Buffer(codes.contiguous())
        self.scales = nn.Buffer(wq.scales.float().reshape(-1).contiguous())
        self.rowsum = nn.Buffer(codes.sum(1, dtype=torch.int32))


class Int8Head(nn.Module):
    """lm_head in 8 bits: its own Int8Table, or the embedding's (`table` passed to forward) plus `pre`."""

    def __init__(self, lin: QLinear, shared: bool):
        super().__init__()
        if lin.bias is not None or lin.online_had:
            raise ExportError("lm_head: an 8-bit lm_head has no bias and no online Hadamard")
        self.table = None if shared else Int8Table("lm_head", lin.wq)
        self.pre = None if lin.pre is None else nn.Buffer(lin.pre.detach().float().contiguous())

    def forward(self, x: Tensor, norm: Norm, table: Int8Table | None = None) -> Tensor:
        t = self.table if self.table is not None else table
        return sq.int8_linear(x, t.codes, t.scales, t.rowsum, norm[0], norm[1], self.pre)


def _concat_linears(parts: list[ExportLinear]) -> ExportLinear | None:
    """One int4 linear computing [p(x) for p in parts] (rows stacked), or None when they cannot share a call."""
    a = parts[0]
    same = all(
        p.quantized and not p.online_had and p.group == a.group and (p.act_bits, p.act_clip) == (a.act_bits, a.act_clip)
        and (p.zeros is None) == (a.zeros is None) and (p.bias is None) == (a.bias is None)
        for p in parts
    )  # fmt: skip
    if not same:
        return None
    fused = copy.copy(a)
    fused._buffers = dict(a._buffers)
    for key in ("qweight", "scales", "zeros", "bias"):
        if a._buffers.get(key) is not None:
            fused._buffers[key] = torch.cat([p._buffers[key] for p in parts])
    return fused


def _kv_bits(name: str, attn) -> tuple[int, int]:
    """(bits, group) of the attention's KV quantizers (16 = float cache); K and V must agree."""
    kq, vq = attn.k_quant, attn.v_quant
    if kq is None and vq is None:
        return 16, 0
    for q in (kq, vq):
        if not isinstance(q, KVQuantizer) or q.sym or q.clip != 1.0 or q.bits not in (4, 8):
            raise ExportError(
                f"{name}: KV quantizer {q!r} is not supported; use asymmetric 4- or 8-bit KV (kv_sym=False)"
            )
    if (kq.bits, kq.group) != (vq.bits, vq.group):
        raise ExportError(f"{name}: K and V caches must share bits and group")
    return int(kq.bits), int(kq.group)


class ExportAttention(nn.Module):
    """GQA attention over a KV cache in buffers; float caches use standard ops, quantized ones kv_attention."""

    def __init__(self, name: str, block, max_seq_len: int):
        super().__init__()
        attn = block.self_attn
        self.n_heads, self.n_kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        q, k, v, self.o_proj = (
            ExportLinear(f"{name}.{p}", getattr(attn, p)) for p in ("q_proj", "k_proj", "v_proj", "o_proj")
        )
        self.qkv = _concat_linears([q, k, v])  # one GEMV (one activation quantization) for q, k and v
        if self.qkv is None:
            self.q_proj, self.k_proj, self.v_proj = q, k, v
        self.r3 = bool(attn.r3)
        if self.r3:
            self.register_buffer("hk", _hadamard_base(self.head_dim))
        self.kv_bits, self.kv_group = _kv_bits(name, attn)
        hkv, d = self.n_kv_heads, self.head_dim
        if self.kv_bits == 16:
            self.register_buffer("k_cache", torch.zeros(hkv, max_seq_len, d))
            self.register_buffer("v_cache", torch.zeros(hkv, max_seq_len, d))
        else:
            lay = kv_cache_layout(hkv, max_seq_len, d, self.kv_bits, self.kv_group)
            self.register_buffer("kv_cache", torch.zeros(lay.nbytes, dtype=torch.uint8))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, input_pos: Tensor, residual: Tensor, norm: Norm) -> Tensor:
        """residual + attention(rms_norm(x))."""
        if self.qkv is not None:
            qkv = self.qkv(x, norm=norm)
        else:
            h = sq.rms_norm(x, *norm)
            qkv = torch.cat([self.q_proj(h), self.k_proj(h), self.v_proj(h)], dim=-1)
        r3 = self.hk if self.r3 else None
        if self.kv_bits == 16:  # the ops write the caches too
            out = sq.attention(qkv, cos, sin, r3, self.k_cache, self.v_cache, input_pos, self.n_heads)
        else:
            out = sq.kv_attention(
                qkv, cos, sin, r3, self.kv_cache, input_pos, self.n_heads, self.n_kv_heads, self.kv_bits, self.kv_group
            )
        return self.o_proj(out, residual)


class ExportBlock(nn.Module):
    def __init__(self, name: str, block, max_seq_len: int, eps: float):
        super().__init__()
        self.eps = eps
        self.attn_norm = nn.Buffer(block.input_layernorm.weight.detach().float().clone())
        self.mlp_norm = nn.Buffer(block.post_attention_layernorm.weight.detach().float().clone())
        self.attn = ExportAttention(f"{name}.self_attn", block, max_seq_len)
        mlp = block.mlp
        gate, up = (ExportLinear(f"{name}.mlp.{p}", getattr(mlp, p)) for p in ("gate_proj", "up_proj"))
        self.gate_up = _concat_linears([gate, up])  # one GEMV streaming both weights
        if self.gate_up is None:
            self.gate_proj, self.up_proj = gate, up
        self.down_proj = ExportLinear(f"{name}.mlp.down_proj", mlp.down_proj)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, input_pos: Tensor) -> Tensor:
        x = self.attn(x, cos, sin, input_pos, residual=x, norm=(self.attn_norm, self.eps))
        norm = (self.mlp_norm, self.eps)
        if self.gate_up is not None:  # down_proj takes [gate(h), up(h)] and applies silu(gate) * up itself
            return self.down_proj(self.gate_up(x, norm=norm), residual=x, glu=True)
        h = sq.rms_norm(x, *norm)
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h), residual=x)


def logit_rows_of(x: Tensor, logit_rows: Tensor | None) -> Tensor:
    """The rows of the final hidden states x [T, dim] whose logits are wanted (all of them when logit_rows is None)."""
    return x if logit_rows is None else x.index_select(0, logit_rows)


class ExportableDecoder(nn.Module):
    """forward(tokens [1, T], input_pos [T], logit_rows [R]) -> logits [1, R, V], the KV cache as mutable buffers."""

    def __init__(self, model: Transformer, max_seq_len: int = 512):
        super().__init__()
        args = model.args
        if max_seq_len < 1 or max_seq_len % 4:
            raise ExportError(f"max_seq_len={max_seq_len} must be a positive multiple of 4")
        if args.sliding_window is not None and args.sliding_window < max_seq_len:
            raise ExportError(f"sliding-window attention is not exported; use max_seq_len <= {args.sliding_window}")
        self.args, self.max_seq_len = args, max_seq_len
        embed_wq, head = getattr(model.embed_tokens, "wq", None), model.lm_head
        self.table = None if embed_wq is None else Int8Table("embed_tokens", embed_wq)
        if embed_wq is None:
            self.embed = nn.Buffer(model.embed_tokens.weight.detach().float().clone())
        cos, sin = model.rope(max_seq_len)
        self.cos, self.sin = nn.Buffer(cos.float().contiguous()), nn.Buffer(sin.float().contiguous())
        self.layers = nn.ModuleList(
            ExportBlock(f"layers.{i}", b, max_seq_len, args.norm_eps) for i, b in enumerate(model.layers)
        )
        self.norm = nn.Buffer(model.norm.weight.detach().float().clone())
        if head.wq is not None and head.wq.bits == 8:
            self.lm_head = Int8Head(head, shared=head.wq is embed_wq)
        elif head.pre is not None:
            raise ExportError("lm_head: `pre` (a table shared with the embedding) needs the 8-bit lm_head")
        else:
            self.lm_head = ExportLinear("lm_head", head)

    def forward(self, tokens: Tensor, input_pos: Tensor, logit_rows: Tensor | None = None) -> Tensor:
        if self.table is None:
            x = F.embedding(tokens[0], self.embed)  # [T, dim]
        else:
            x = sq.int8_embedding(tokens[0], self.table.codes, self.table.scales)
        cos, sin = self.cos[input_pos], self.sin[input_pos]
        for layer in self.layers:
            x = layer(x, cos, sin, input_pos)
        # [None] on the [R, dim] input, not on the [R, V] logits: the runtime copies what it unsqueezes.
        x, norm = logit_rows_of(x, logit_rows)[None], (self.norm, self.args.norm_eps)
        if isinstance(self.lm_head, Int8Head):
            return self.lm_head(x, norm, self.table)
        return self.lm_head(x, norm=norm)

    def reset_cache(self) -> None:
        """Zero every KV cache buffer (eager use)."""
        for name, buf in self.named_buffers():
            if name.endswith(("k_cache", "v_cache", "kv_cache")):
                buf.zero_()

    def cache_buffer_names(self) -> list[str]:
        return [n for n, _ in self.named_buffers() if n.endswith(("k_cache", "v_cache", "kv_cache"))]
