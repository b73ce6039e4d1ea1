"""Storage of quantized weights in the layout of docs/INT4_FORMAT.md.

Weights of at most 4 bits are stored as int4 nibbles (two codes a byte, even input channel in the low
nibble); symmetric codes are stored with the int4 offset 8 whatever the bit width (`w = (q - 8) * s`), so one
int4 kernel serves 2, 3 and 4 bits. Weights of 5 to 8 bits keep one code a byte (`w = (q - 2^(b-1)) * s`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import check_bits
from .quantizer import QuantizedWeight, weight_group_size

INT4_OFFSET = 8


def _check_codes(codes: Tensor, limit: int, what: str) -> None:
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise ValueError(f"{what} must be a 2-D uint8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) > limit:
        raise ValueError(f"{what} holds code {int(codes.max())} > {limit}; quantize to fewer bits first")


def pack_int4(codes: Tensor) -> Tensor:
    """uint8 codes in [0, 15] of shape [N, K] -> uint8 [N, ceil(K / 2)] (even k low nibble, odd k high)."""
    _check_codes(codes, 15, "int4 codes")
    n, k = codes.shape
    if k % 2:
        codes = torch.cat([codes, codes.new_zeros(n, 1)], dim=1)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_int4(packed: Tensor, k: int) -> Tensor:
    """Inverse of `pack_int4`: uint8 [N, ceil(K / 2)] -> uint8 codes [N, K]."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed int4 must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if k < 1 or packed.shape[1] != math.ceil(k / 2):
        need = math.ceil(k / 2) if k > 0 else "K >= 1"
        raise ValueError(f"packed int4 of width {packed.shape[1]} does not hold K={k} codes (needs {need})")
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)
    return codes[:, :k].contiguous()


def _sym_shift(bits: int) -> int:
    """What a symmetric code gains when stored (the int4 offset 8 replaces 2^(bits-1) below 4 bits)."""
    return INT4_OFFSET - 2 ** (bits - 1) if bits <= 4 else 0


def pack_weight(qw: QuantizedWeight) -> dict[str, Tensor]:
    """{"qweight", "scales"[, "zeros"]} of one quantized linear, as stored in a spinquant checkpoint."""
    _check_codes(qw.codes, 2**qw.bits - 1, f"{qw.bits}-bit codes")
    codes = qw.codes + _sym_shift(qw.bits) if qw.sym else qw.codes
    out = {"qweight": pack_int4(codes) if qw.bits <= 4 else codes.clone(), "scales": qw.scales.clone()}
    if qw.zeros is not None:
        out["zeros"] = qw.zeros.clone()
    return out


def unpack_weight(tensors: dict[str, Tensor], k: int, group: int, bits: int = 4) -> QuantizedWeight:
    """Inverse of `pack_weight` for K input channels, group size `group` (0 = per-channel) and `bits` bits."""
    check_bits("bits", bits, allow_off=False)
    missing = {"qweight", "scales"} - set(tensors)
    if missing:
        raise ValueError(f"packed weight lacks {sorted(missing)}; expected qweight, scales (+ zeros if asym)")
    qweight, zeros = tensors["qweight"], tensors.get("zeros")
    if bits <= 4:
        codes = unpack_int4(qweight, k)
    else:
        _check_codes(qweight, 2**bits - 1, f"{bits}-bit qweight")
        if qweight.shape[1] != k:
            raise ValueError(f"{bits}-bit qweight has {qweight.shape[1]} columns, expected K={k}")
        codes = qweight.clone()
    sym = zeros is None
    if sym:
        shift = _sym_shift(bits)
        if codes.numel() and (int(codes.min()) < shift or int(codes.max()) > shift + 2**bits - 1):
            raise ValueError(f"symmetric codes out of range for {bits} bits; is `bits` right?")
        codes = codes - shift
    scales, zeros = tensors["scales"].clone(), None if sym else zeros.clone()
    return QuantizedWeight(codes, scales, zeros, weight_group_size(k, group), bits, sym)
