"""The `spinquant` custom operators that an exported program calls, as torch.library definitions.

Each op has a functional form, an `.out` overload (what ExecuTorch's out-variant pass picks and what
`export/ops.cpp` registers in the runtime), a fake kernel for torch.export and a CPU implementation in
plain PyTorch. The CPU implementation is the eager reference the native runtime kernels are tested against:

- `hadamard(x, hk)`: orthonormal Hadamard transform over the last dim, n = K * 2^k, hk the int8 K x K base.
- `int4_linear(x, qweight, scales, zeros, bias, group, act_bits, act_clip, residual=None, norm=None,
  norm_eps=0, glu=False, had=None)`: y = fq(x) @ W^T (+ bias) (+ residual), W in the int4 storage layout of
  docs/INT4_FORMAT.md, fq the per-token asymmetric activation quantizer (act_bits 16: none); `residual` (shaped
  like y) fuses the decoder's residual add. Before the linear, in this order: `norm` (a [x.size(-1)] weight)
  x = rms_norm(x, norm, norm_eps); `glu` x = silu_mul(x) (x holds gate then up); `had` (an int8 base like
  `hadamard`'s) x = hadamard(x, had), R4 before down_proj. One runtime op a linear, whatever precedes it.
- `attention(qkv, cos, sin, hk, k_cache, v_cache, input_pos, n_heads)`: a layer's whole attention step after
  the q/k/v projection. qkv [T, (H + 2 Hkv) D] holds q, k, v side by side; RoPE (cos/sin [T, D]) and, when
  hk is given, R3 (the Hadamard transform over head_dim) go on q and k; k, v are written into the float caches
  [Hkv, S, D] at input_pos, then causal grouped-query attention of q over positions 0 .. input_pos[t]:
  -> [T, H D]. One runtime op where split, views, two RoPEs and attention took eight.
- `kv_attention(qkv, cos, sin, hk, cache, input_pos, n_heads, n_kv_heads, bits, group)`: the same over the
  layer's quantized KV cache (one uint8 buffer, see `kv_cache_layout`; k and v quantized into it).
- `int8_linear(x, codes, scales, rowsum, norm=None, norm_eps=0, pre=None)`: lm_head in 8 bits (the int8 storage of
  kernels/include/spinquant/int8.h): y = fq8(h) @ (codes * scales)^T with h = rms_norm(x, norm) when given, then
  h @ pre when given, fq8 the per-token asymmetric 8-bit activation quantizer (clip 1).
- `int8_embedding(ids, codes, scales)`: codes[ids] * scales[ids] -> float32 [T, dim] (exact).
- `rms_norm(x, weight, eps)`, `silu_mul(gate_up)`: fused element-wise steps of the decoder (one runtime op
  each instead of 3 to 10 portable ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from spinquant.hadamard import hadamard_matrix
from spinquant.model import apply_rope, rms_norm
from spinquant.quant.packing import unpack_int4
from spinquant.quant.quantizer import fake_quant

NAMESPACE = "spinquant"

_lib = torch.library.Library(NAMESPACE, "DEF")
_lib.define("hadamard(Tensor x, Tensor hk) -> Tensor")
_lib.define("hadamard.out(Tensor x, Tensor hk, *, Tensor(a!) out) -> Tensor(a!)")
_LINEAR_ARGS = (
    "Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, Tensor? bias, int group, int act_bits, float act_clip, "
    "Tensor? residual=None, Tensor? norm=None, float norm_eps=0.0, bool glu=False, Tensor? had=None"
)
_lib.define(f"int4_linear({_LINEAR_ARGS}) -> Tensor")
_lib.define(f"int4_linear.out({_LINEAR_ARGS}, *, Tensor(a!) out) -> Tensor(a!)")
_ATTN_ARGS = (
    "Tensor qkv, Tensor cos, Tensor sin, Tensor? hk, Tensor(a!) cache, Tensor input_pos, int n_heads, int n_kv_heads, "
    "int bits, int group"
)
_lib.define(f"kv_attention({_ATTN_ARGS}) -> Tensor")
_lib.define(f"kv_attention.out({_ATTN_ARGS}, *, Tensor(b!) out) -> Tensor(b!)")


# ---- hadamard ------------------------------------------------------------------------------------------


def _hadamard_ref(x: Tensor, hk: Tensor) -> Tensor:
    n, k = x.shape[-1], hk.shape[0]
    m = n // k
    if k * m != n or m & (m - 1):
        raise ValueError(f"hadamard: n={n} is not K * 2^k for the given K={k}")
    y = x.reshape(-1, k, m).double() @ hadamard_matrix(m).T
    y = hk.double() @ y
    return (y / math.sqrt(n)).to(x.dtype).reshape(x.shape)


@torch.library.impl(_lib, "hadamard", "CPU")
def _hadamard_cpu(x: Tensor, hk: Tensor) -> Tensor:
    return _hadamard_ref(x, hk)


@torch.library.impl(_lib, "hadamard.out", "CPU")
def _hadamard_out_cpu(x: Tensor, hk: Tensor, *, out: Tensor) -> Tensor:
    return out.resize_(x.shape).copy_(_hadamard_ref(x, hk))


@torch.library.register_fake(f"{NAMESPACE}::hadamard")
def _hadamard_fake(x: Tensor, hk: Tensor) -> Tensor:
    return torch.empty_like(x)


# ---- int4 linear ---------------------------------------------------------------------------------------


def dequantize_storage(qweight: Tensor, scales: Tensor, zeros: Tensor | None, k: int, group: int) -> Tensor:
    """float32 [N, K] weight from the int4 storage layout (symmetric: (q - 8) * s; asymmetric: (q - z) * s)."""
    codes = unpack_int4(qweight, k).float()
    cols = torch.arange(k) // group
    offset = 8.0 if zeros is None else zeros.float()[:, cols]
    return (codes - offset) * scales.float()[:, cols]


def _linear_ref(
    x,
    qweight,
    scales,
    zeros,
    bias,
    group,
    act_bits,
    act_clip,
    residual=None,
    norm=None,
    norm_eps=0.0,
    glu=False,
    had=None,
) -> Tensor:
    if norm is not None:
        x = rms_norm(x, norm, norm_eps)
    if glu:
        x = _silu_mul_ref(x)
    if had is not None:
        x = _hadamard_ref(x, had)
    k = x.shape[-1]
    w = dequantize_storage(qweight, scales, zeros, k, group)
    if act_bits < 16:
        x = fake_quant(x, act_bits, sym=False, group=0, clip=act_clip)
    y = F.linear(x, w, bias)
    return y if residual is None else y + residual


def _linear_shape(x: Tensor, qweight: Tensor) -> list[int]:
    return [*x.shape[:-1], qweight.shape[0]]


@torch.library.impl(_lib, "int4_linear", "CPU")
def _int4_linear_cpu(*args, **kwargs) -> Tensor:
    return _linear_ref(*args, **kwargs)


@torch.library.impl(_lib, "int4_linear.out", "CPU")
def _int4_linear_out_cpu(*args, out, **kwargs) -> Tensor:
    y = _linear_ref(*args, **kwargs)
    return out.resize_(y.shape).copy_(y)


@torch.library.register_fake(f"{NAMESPACE}::int4_linear")
def _int4_linear_fake(x, qweight, *args, **kwargs) -> Tensor:
    return x.new_empty(_linear_shape(x, qweight))


# ---- quantized-KV attention ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KVCacheLayout:
    """Byte layout of one layer's quantized KV cache (the storage of kernels/include/spinquant/attention.h).

    For K then V: codes uint8 [Hkv, S, row_bytes], scales float32 [Hkv, S, G], zeros float32 [Hkv, S, G].
    """

    n_kv_heads: int
    max_seq_len: int
    head_dim: int
    bits: int
    group: int

    @property
    def groups(self) -> int:
        return self.head_dim // self.group

    @property
    def row_bytes(self) -> int:
        return self.head_dim * self.bits // 8

    def sections(self) -> list[tuple[int, int]]:
        """(byte offset, byte size) of K codes, K scales, K zeros, V codes, V scales, V zeros."""
        rows = self.n_kv_heads * self.max_seq_len
        sizes = [rows * self.row_bytes, rows * self.groups * 4, rows * self.groups * 4] * 2
        offsets = [sum(sizes[:i]) for i in range(6)]
        return list(zip(offsets, sizes, strict=True))

    @property
    def nbytes(self) -> int:
        off, size = self.sections()[-1]
        return off + size


def kv_cache_layout(n_kv_heads: int, max_seq_len: int, head_dim: int, bits: int, group: int) -> KVCacheLayout:
    """Validated layout (bits 4 or 8, group dividing head_dim; 0 = head_dim, max_seq_len a multiple of 4)."""
    group = head_dim if group <= 0 else group
    if bits not in (4, 8):
        raise ValueError(f"quantized KV cache needs kv_bits 4 or 8, got {bits}")
    if head_dim % group or (bits == 4 and head_dim % 2):
        raise ValueError(f"KV group {group} must divide head_dim {head_dim} (even at 4 bits)")
    if max_seq_len % 4:
        raise ValueError(f"max_seq_len={max_seq_len} must be a multiple of 4 for the quantized KV cache")
    return KVCacheLayout(n_kv_heads, max_seq_len, head_dim, bits, group)


def _cache_views(cache: Tensor, lay: KVCacheLayout) -> list[Tensor]:
    """[K codes, K scales, K zeros, V codes, V scales, V zeros] as views of the uint8 cache buffer."""
    views = []
    for i, (off, size) in enumerate(lay.sections()):
        part = cache[off : off + size]
        if i % 3:
            part = part.view(torch.float32).view(lay.n_kv_heads, lay.max_seq_len, lay.groups)
        else:
            part = part.view(lay.n_kv_heads, lay.max_seq_len, lay.row_bytes)
        views.append(part)
    return views


def _quantize_rows(x: Tensor, lay: KVCacheLayout) -> tuple[Tensor, Tensor, Tensor]:
    """x [..., D] -> (packed codes [..., row_bytes], scale [..., G], zero [..., G]) by attention.h's rule."""
    xg = x.float().reshape(*x.shape[:-1], lay.groups, lay.group)
    top = 2**lay.bits - 1
    xmax, xmin = xg.amax(-1).clamp(min=0), xg.amin(-1).clamp(max=0)
    scale = (xmax - xmin) / top
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-xmin / scale)
    q = torch.clamp(torch.round(xg / scale[..., None]) + zero[..., None], 0, top).to(torch.uint8)
    q = q.reshape(*x.shape)
    if lay.bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scale, zero


def _dequantize_rows(codes: Tensor, scale: Tensor, zero: Tensor, lay: KVCacheLayout) -> Tensor:
    if lay.bits == 4:
        codes = torch.stack([codes & 0x0F, codes >> 4], dim=-1).flatten(-2)
    q = codes.float().reshape(*codes.shape[:-1], lay.groups, lay.group)
    return ((q - zero[..., None]) * scale[..., None]).flatten(-2)


def _layout_of(cache: Tensor, k: Tensor, bits: int, group: int) -> KVCacheLayout:
    hkv, d = k.shape[1], k.shape[2]
    unit = kv_cache_layout(hkv, 4, d, bits, group).nbytes // 4
    if cache.dtype != torch.uint8 or cache.dim() != 1 or cache.numel() % unit:
        raise ValueError(f"kv_attention: cache must be a flat uint8 buffer of a multiple of {unit} bytes")
    return kv_cache_layout(hkv, cache.numel() // unit, d, bits, group)


def _rope_ref(x: Tensor, cos: Tensor, sin: Tensor, hk: Tensor | None = None) -> Tensor:
    """x [T, H, D], cos/sin [T, D]: the model's rotary embedding, then (hk given: R3) `hadamard` per head."""
    y = apply_rope(x.transpose(0, 1), cos, sin).transpose(0, 1)
    return y if hk is None else _hadamard_ref(y, hk)


def _split_qkv(qkv: Tensor, cos, sin, hk, n_heads: int, n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """q [T, H, D], k and v [T, Hkv, D] from qkv [T, (H + 2 Hkv) D], RoPE (and R3) on q and k."""
    t, d = qkv.shape[0], qkv.shape[1] // (n_heads + 2 * n_kv_heads)
    q, k, v = qkv.split([n_heads * d, n_kv_heads * d, n_kv_heads * d], dim=-1)
    q = _rope_ref(q.reshape(t, n_heads, d), cos, sin, hk)
    return q, _rope_ref(k.reshape(t, n_kv_heads, d), cos, sin, hk), v.reshape(t, n_kv_heads, d)


def _kv_attention_ref(qkv, cos, sin, hk, cache, input_pos, n_heads, n_kv_heads, bits, group) -> Tensor:
    q, k, v = _split_qkv(qkv, cos, sin, hk, n_heads, n_kv_heads)
    lay = _layout_of(cache, k, bits, group)
    views = _cache_views(cache, lay)
    pos = input_pos.long()
    for which, x in ((0, k), (1, v)):
        codes, scale, zero = _quantize_rows(x.transpose(0, 1), lay)  # [Hkv, T, ...]
        for part, val in zip(views[3 * which : 3 * which + 3], (codes, scale, zero), strict=True):
            part[:, pos] = val
    length = int(pos.max()) + 1
    kf, vf = (_dequantize_rows(*(t[:, :length] for t in views[3 * w : 3 * w + 3]), lay) for w in (0, 1))
    t, h, d = q.shape
    mask = torch.arange(length)[None, :] <= pos[:, None]  # [T, S]
    qh = q.transpose(0, 1)[None]  # [1, H, T, D]
    out = F.scaled_dot_product_attention(qh, kf[None], vf[None], attn_mask=mask, enable_gqa=h != n_kv_heads)
    return out[0].transpose(0, 1).reshape(t, h * d)


def _attention_shape(qkv: Tensor, n_heads: int, n_kv_heads: int) -> list[int]:
    return [qkv.shape[0], n_heads * (qkv.shape[1] // (n_heads + 2 * n_kv_heads))]


@torch.library.impl(_lib, "kv_attention", "CPU")
def _kv_attention_cpu(qkv, cos, sin, hk, cache, input_pos, n_heads, n_kv_heads, bits, group) -> Tensor:
    return _kv_attention_ref(qkv, cos, sin, hk, cache, input_pos, n_heads, n_kv_heads, bits, group)


@torch.library.impl(_lib, "kv_attention.out", "CPU")
def _kv_attention_out_cpu(qkv, cos, sin, hk, cache, input_pos, n_heads, n_kv_heads, bits, group, *, out) -> Tensor:
    y = _kv_attention_ref(qkv, cos, sin, hk, cache, input_pos, n_heads, n_kv_heads, bits, group)
    return out.resize_(y.shape).copy_(y)


@torch.library.register_fake(f"{NAMESPACE}::kv_attention")
def _kv_attention_fake(qkv, cos, sin, hk, cache, input_pos, n_heads, n_kv_heads, bits, group) -> Tensor:
    return qkv.new_empty(_attention_shape(qkv, n_heads, n_kv_heads))


# ---- small fused element-wise ops (fewer, cheaper steps per decoded token) --------------------------------

_lib.define("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor")
_lib.define("rms_norm.out(Tensor x, Tensor weight, float eps, *, Tensor(a!) out) -> Tensor(a!)")
_lib.define("silu_mul(Tensor gate_up) -> Tensor")
_lib.define("silu_mul.out(Tensor gate_up, *, Tensor(a!) out) -> Tensor(a!)")


def _silu_mul_ref(gate_up: Tensor) -> Tensor:
    """[..., 2F] (gate then up) -> silu(gate) * up [..., F]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _register_elementwise(name: str, ref, fake) -> None:
    torch.library.impl(_lib, name, "CPU")(ref)

    def out_impl(*args, out):
        y = ref(*args)
        return out.resize_(y.shape).copy_(y)

    torch.library.impl(_lib, f"{name}.out", "CPU")(out_impl)
    torch.library.register_fake(f"{NAMESPACE}::{name}")(fake)


_register_elementwise("rms_norm", rms_norm, lambda x, weight, eps: torch.empty_like(x))
_register_elementwise(
    "silu_mul", _silu_mul_ref, lambda gate_up: gate_up.new_empty([*gate_up.shape[:-1], gate_up.shape[-1] // 2])
)

# ---- attention over float caches ------------------------------------------------------------------------

_FLOAT_ATTN_ARGS = (
    "Tensor qkv, Tensor cos, Tensor sin, Tensor? hk, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor input_pos, "
    "int n_heads"
)
_lib.define(f"attention({_FLOAT_ATTN_ARGS}) -> Tensor")
_lib.define(f"attention.out({_FLOAT_ATTN_ARGS}, *, Tensor(c!) out) -> Tensor(c!)")


def _attention_ref(qkv, cos, sin, hk, k_cache: Tensor, v_cache: Tensor, input_pos: Tensor, n_heads: int) -> Tensor:
    """Write k, v into the float caches [Hkv, S, D] at input_pos, then causal GQA attention of q over them
    (positions 0 .. input_pos[t] only) -> [T, H D]."""
    q, k, v = _split_qkv(qkv, cos, sin, hk, n_heads, k_cache.shape[0])
    k_cache[:, input_pos] = k.transpose(0, 1)
    v_cache[:, input_pos] = v.transpose(0, 1)
    length = int(input_pos.max()) + 1
    mask = torch.arange(length)[None, :] <= input_pos[:, None]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k_cache[None, :, :length],
        v_cache[None, :, :length],
        attn_mask=mask,
        enable_gqa=q.shape[1] != k_cache.shape[0],
    )
    return out[0].transpose(0, 1).reshape(q.shape[0], -1)


@torch.library.impl(_lib, "attention", "CPU")
def _attention_cpu(qkv, cos, sin, hk, k_cache, v_cache, input_pos, n_heads) -> Tensor:
    return _attention_ref(qkv, cos, sin, hk, k_cache, v_cache, input_pos, n_heads)


@torch.library.impl(_lib, "attention.out", "CPU")
def _attention_out_cpu(qkv, cos, sin, hk, k_cache, v_cache, input_pos, n_heads, *, out) -> Tensor:
    y = _attention_ref(qkv, cos, sin, hk, k_cache, v_cache, input_pos, n_heads)
    return out.resize_(y.shape).copy_(y)


@torch.library.register_fake(f"{NAMESPACE}::attention")
def _attention_fake(qkv, cos, sin, hk, k_cache, v_cache, input_pos, n_heads) -> Tensor:
    return qkv.new_empty(_attention_shape(qkv, n_heads, k_cache.shape[0]))


# ---- the 8-bit ends: lm_head and embedding -------------------------------------------------------------------

_INT8_LINEAR_ARGS = (
    "Tensor x, Tensor codes, Tensor scales, Tensor rowsum, Tensor? norm=None, float norm_eps=0.0, Tensor? pre=None"
)
_lib.define(f"int8_linear({_INT8_LINEAR_ARGS}) -> Tensor")
_lib.define(f"int8_linear.out({_INT8_LINEAR_ARGS}, *, Tensor(a!) out) -> Tensor(a!)")
_lib.define("int8_embedding(Tensor ids, Tensor codes, Tensor scales) -> Tensor")
_lib.define("int8_embedding.out(Tensor ids, Tensor codes, Tensor scales, *, Tensor(a!) out) -> Tensor(a!)")


def _int8_linear_ref(x, codes, scales, rowsum, norm=None, norm_eps=0.0, pre=None) -> Tensor:
    if norm is not None:
        x = rms_norm(x, norm, norm_eps)
    if pre is not None:
        x = x @ pre
    x = fake_quant(x, 8, sym=False, group=0, clip=1.0)
    return F.linear(x, codes.float() * scales[:, None])


def _int8_embedding_ref(ids, codes, scales) -> Tensor:
    return codes[ids].float() * scales[ids][:, None]


_register_elementwise(
    "int8_linear", _int8_linear_ref, lambda x, codes, *args, **kwargs: x.new_empty([*x.shape[:-1], codes.shape[0]])
)
_register_elementwise(
    "int8_embedding", _int8_embedding_ref, lambda ids, codes, scales: scales.new_empty([ids.shape[0], codes.shape[1]])
)

OPS = ("hadamard", "int4_linear", "kv_attention", "rms_norm", "silu_mul", "attention", "int8_linear", "int8_embedding")
