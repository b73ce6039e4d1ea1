"""Thin torch-facing wrappers of the native module `spinquant._kernels` (C++ kernels, see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from . import _kernels
from .hadamard import base_hadamard

# --- ISA selection ------------------------------------------------------------------------------------------


def active_isa() -> str:
    """The instruction set the kernels dispatch to ("scalar", "avx2", "avx512", "neon", "dotprod", "i8mm")."""
    return _kernels.active_isa()


def supported_isas() -> list[str]:
    """Instruction sets this CPU and build can run, weakest first."""
    return list(_kernels.supported_isas())


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Force one instruction set inside the block (tests, benchmarks); automatic choice afterwards."""
    _kernels.force_isa(name)
    try:
        yield
    finally:
        _kernels.reset_isa()


# --- int4 linear --------------------------------------------------------------------------------------------


def read_bytes(buffer: np.ndarray, threads: int = 0, prefetch_bytes: int = 16384) -> int:
    """Read a contiguous uint8 array once on the kernels' thread pool (a bandwidth probe), software-prefetching
    prefetch_bytes ahead (0 = none); returns its word sum."""
    return _kernels.read_bytes(buffer, threads, prefetch_bytes)


def int8_peak(threads: int = 1, seconds: float = 0.2) -> tuple[float, str]:
    """(int8 multiply-accumulates per second, instruction) of this CPU's dot-product loop on `threads` threads at
    once: the compute peak a prefill GEMM is measured against (see kernels/include/spinquant/peak.h)."""
    return _kernels.int8_peak(threads, seconds)


def quantize_activations(x: Tensor, bits: int, clip: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token asymmetric quantization of float32 [M, K] -> (codes uint8 [M, K], scales [M], zeros int32 [M])."""
    codes, scales, zeros = _kernels.quantize_activations(_as_numpy(x, "x"), bits, clip)
    return torch.from_numpy(codes), torch.from_numpy(scales), torch.from_numpy(zeros)


class Int4Linear(nn.Module):
    """y = x @ W.T (+ bias) with W int4 (docs/INT4_FORMAT.md), prepacked once; activations per `act_bits`.

    act_bits 4 or 8 quantize each token's activations on the fly (asymmetric, clip `act_clip`); 16 keeps fp32.
    `group` 0 or -1 means per-channel scales; `threads` 0 uses all cores.
    """

    def __init__(
        self,
        qweight: Tensor,
        scales: Tensor,
        zeros: Tensor | None,
        in_features: int,
        group: int,
        bias: Tensor | None = None,
        act_bits: int = 8,
        act_clip: float = 1.0,
        threads: int = 0,
    ) -> None:
        super().__init__()
        z = None if zeros is None else _as_numpy(zeros, "zeros")
        self.native = _kernels.Int4Linear(
            _as_numpy(qweight, "qweight"), _as_numpy(scales, "scales"), z, in_features, group
        )
        self.in_features, self.out_features = in_features, self.native.N
        self.act_bits, self.act_clip, self.threads = act_bits, act_clip, threads
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @classmethod
    def from_packed(cls, tensors: dict[str, Tensor], in_features: int, group: int, **kwargs) -> Int4Linear:
        """From one layer's checkpoint tensors {"qweight", "scales"[, "zeros"]} (`quant.packing.pack_weight`)."""
        missing = {"qweight", "scales"} - set(tensors)
        if missing:
            raise ValueError(f"packed weight lacks {sorted(missing)}; expected qweight, scales (+ zeros if asym)")
        return cls(tensors["qweight"], tensors["scales"], tensors.get("zeros"), in_features, group, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """x float32 [..., K] -> float32 [..., N]."""
        lead = x.shape[:-1]
        x2 = x.detach().reshape(-1, x.shape[-1]).float().contiguous()
        bias = None if self.bias is None else self.bias.numpy()
        y = self.native.forward(x2.numpy(), self.act_bits, self.act_clip, bias, self.threads)
        return torch.from_numpy(y).reshape(*lead, self.out_features)

    def dequantize(self) -> Tensor:
        """The dequantized weight, float32 [N, K]."""
        return torch.from_numpy(self.native.dequantize())

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group={self.native.group}, act_bits={self.act_bits}"


def _as_numpy(t: Tensor, name: str) -> np.ndarray:
    """CPU tensor -> numpy array sharing memory (dtype and shape are checked by the native module)."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}; the native kernels run on CPU tensors (call .cpu())")
    return t.detach().contiguous().numpy()


# --- fast Walsh-Hadamard transform --------------------------------------------------------------------------


def _inplace_numpy(x: Tensor, name: str):
    """A float32 / float16 contiguous CPU tensor -> numpy view for an in-place kernel (no silent copy)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float16) or not x.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous float32 or float16 CPU tensor for an in-place transform, got "
            f"{x.dtype} on {x.device} (contiguous={x.is_contiguous()}); use .float().contiguous()"
        )
    return x.detach().numpy()


def hadamard_transform_(x: Tensor, hk: Tensor | None = None, threads: int = 0) -> Tensor:
    """In place y = x @ (kron(hk, H_m) / sqrt(n)).T over the last dim; hk int8 [K, K] (+-1) or None; returns x."""
    h = None if hk is None else _as_numpy(hk.to(torch.int8), "hk")
    _kernels.hadamard_transform_(_inplace_numpy(x, "x"), h, threads)
    return x


class FastHadamard:
    """Native `spinquant.hadamard.hadamard_transform` of one size n (H_K from `base_hadamard`), validated once."""

    def __init__(self, n: int, threads: int = 0) -> None:
        k, hk = base_hadamard(n)
        self.n, self.K, self.threads = n, k, threads
        self.native = _kernels.HadamardTransform(n, None if k == 1 else hk.numpy())

    def apply_(self, x: Tensor) -> Tensor:
        """In place over the last dim of a contiguous float32 or float16 CPU tensor; returns x.

        float16 is transformed in fp32 and rounded back (to nearest even).
        """
        self.native.apply_(_inplace_numpy(x, "x"), self.threads)
        return x

    def __call__(self, x: Tensor) -> Tensor:
        """A transformed float32 copy of x (last dim n)."""
        return self.apply_(x.detach().to(torch.float32, copy=True).contiguous())


# --- quantized-KV attention ---------------------------------------------------------------------------------


class QuantKVCache:
    """One layer's KV cache with K and V stored as `bits`-bit asymmetric groups; attention runs natively.

    Same quantization as the fake KV quantizer (see kernels/include/spinquant/attention.h); with `rotate_qk`
    (R3) keys are Hadamard-transformed before quantization and queries before the dot product.
    """

    def __init__(
        self,
        n_kv_heads: int,
        head_dim: int,
        max_seq_len: int,
        bits: int = 4,
        group: int | None = None,
        rotate_qk: bool = False,
    ) -> None:
        self.native = _kernels.QuantKVCache(
            n_kv_heads, head_dim, max_seq_len, bits, head_dim if group is None else group, rotate_qk
        )

    def append(self, k: Tensor, v: Tensor, start_pos: int) -> None:
        """Store k, v float32 [T, n_kv_heads, head_dim] at positions start_pos .. start_pos + T - 1."""
        self.native.append(_as_numpy(k.float(), "k"), _as_numpy(v.float(), "v"), start_pos)

    def attention(self, q: Tensor, start_pos: int, scale: float | None = None, threads: int = 0) -> Tensor:
        """Causal GQA attention of q [T, n_heads, head_dim] (positions start_pos..) -> float32 [T, n_heads, hd]."""
        return torch.from_numpy(self.native.attention(_as_numpy(q.float(), "q"), start_pos, scale, threads))

    def storage(self, which: str) -> tuple[Tensor, Tensor, Tensor]:
        """Read-only views of "k" or "v": codes uint8 [n_kv, max_seq, row_bytes], scales, zeros [.., groups]."""
        if which not in ("k", "v"):
            raise ValueError(f'storage(which): which must be "k" or "v", got {which!r}')
        with warnings.catch_warnings():  # torch warns that the numpy views are read-only; they stay unwritten
            warnings.simplefilter("ignore", UserWarning)
            return tuple(torch.from_numpy(a) for a in self.native.storage(0 if which == "k" else 1))

    def reset(self) -> None:
        """Forget every position (length 0)."""
        self.native.reset()

    @property
    def length(self) -> int:
        """Number of positions stored."""
        return self.native.length
