"""`QuantConfig`: what to quantize (weights, activations, KV cache), how, and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

FULL_PRECISION = 16
_BITS = (2, 3, 4, 5, 6, 7, 8, FULL_PRECISION)
_METHODS = ("rtn", "gptq")
EMBED_BITS = (8, FULL_PRECISION)
GPTQ_DTYPES = ("fp32", "bf16")  # the calibration forward's matmuls (Hessians always accumulate in fp32)
LM_HEAD_BITS = (4, 8, FULL_PRECISION)


def check_bits(name: str, value: Any, allow_off: bool = True) -> None:
    """ValueError unless value is an integer bit width from 2 to 8 (or 16 = off, if allowed)."""
    valid = _BITS if allow_off else _BITS[:-1]
    if isinstance(value, bool) or not isinstance(value, int) or value not in valid:
        off = ", or 16 for no quantization" if allow_off else ""
        raise ValueError(f"{name}={value!r} is not supported: use an integer from 2 to 8{off}")


def _check_group(name: str, value: Any, off: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ValueError(f"{name}={value!r} is not supported: use a group size > 0, or 0 (or -1) for {off}")


def _check_ratio(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}={value!r} is not supported: use a clip ratio in (0, 1]")


@dataclass(frozen=True)
class QuantConfig:
    """Weight / activation / KV-cache quantization settings; 16 bits means "not quantized".

    Groups run along the input channels (weights) or the last dim (activations, KV); group 0 or -1
    means one group per row (weights: per output channel; KV: per head and token). `a_clip=None`
    resolves to 0.9 for activations of 4 bits or fewer and 1.0 otherwise (see `act_clip`).
    `w_clip_norm` is the p of the |error|^p the weight clip search minimises (2: squared error; the
    official SpinQuant/QuaRot code uses 2.4). `o_proj_per_head` quantizes o_proj's input per token and
    head (groups of head_dim, as the official code) instead of per token over all channels (our kernels).

    The ends of the network: `embed_bits` 16 keeps the embedding in float, 8 stores it as per-row symmetric
    int8; `lm_head_bits` 16 keeps lm_head in float, 4 quantizes it like the decoder linears (w_bits, w_group;
    activations as theirs), 8 as per-channel symmetric int8 with 8-bit per-token activations. A model with tied
    embeddings at 8 and 8 keeps one shared table (see `quant.ends`).

    GPTQ: damping `gptq_damp`, lazy-update block `gptq_block`, `gptq_act_order`, and `gptq_dtype`: the
    calibration forward's matmuls in fp32 or bf16 (the Hessians and the solve are always fp32).
    """

    w_bits: int = FULL_PRECISION
    w_group: int = 0
    w_sym: bool = True
    w_clip_search: bool = True
    w_clip_norm: float = 2.0
    w_method: str = "rtn"
    a_bits: int = FULL_PRECISION
    a_sym: bool = False
    a_clip: float | None = None
    o_proj_per_head: bool = False
    kv_bits: int = FULL_PRECISION
    kv_group: int = 0
    kv_sym: bool = False
    embed_bits: int = FULL_PRECISION
    lm_head_bits: int = FULL_PRECISION
    gptq_damp: float = 0.01
    gptq_block: int = 128
    gptq_act_order: bool = False
    gptq_dtype: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits", "kv_bits"):
            check_bits(name, getattr(self, name))
        for name, valid in (("embed_bits", EMBED_BITS), ("lm_head_bits", LM_HEAD_BITS)):
            value = getattr(self, name)
            if isinstance(value, bool) or value not in valid:
                choices = ", ".join(str(v) for v in valid)
                raise ValueError(f"{name}={value!r} is not supported: use one of {choices} (16 = not quantized)")
        _check_group("w_group", self.w_group, "per-channel")
        _check_group("kv_group", self.kv_group, "one group per head (head_dim)")
        if self.w_group == -1:
            object.__setattr__(self, "w_group", 0)
        if self.kv_group == -1:
            object.__setattr__(self, "kv_group", 0)
        if self.w_method not in _METHODS:
            raise ValueError(f"w_method={self.w_method!r} is not supported: use one of {', '.join(_METHODS)}")
        if self.a_clip is not None:
            _check_ratio("a_clip", self.a_clip)
        norm = self.w_clip_norm
        if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not 1.0 <= norm <= 8.0:
            raise ValueError(f"w_clip_norm={norm!r} is not supported: use a p-norm from 1 to 8 (e.g. 2 or 2.4)")
        damp, block = self.gptq_damp, self.gptq_block
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or damp < 0:
            raise ValueError(f"gptq_damp={damp!r} is not supported: use a float >= 0 (e.g. 0.01)")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"gptq_block={block!r} is not supported: use a positive integer (e.g. 128)")
        if self.gptq_dtype not in GPTQ_DTYPES:
            raise ValueError(f"gptq_dtype={self.gptq_dtype!r} is not supported: use one of {', '.join(GPTQ_DTYPES)}")
        flags = ("w_sym", "w_clip_search", "a_sym", "o_proj_per_head", "kv_sym", "gptq_act_order")
        for name in flags:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported: use true or false")

    @property
    def act_clip(self) -> float:
        """The activation clip ratio in effect: `a_clip`, or 0.9 at <= 4 bits and 1.0 otherwise."""
        if self.a_clip is not None:
            return float(self.a_clip)
        return 0.9 if self.a_bits <= 4 else 1.0

    @property
    def quantizes_weights(self) -> bool:
        return self.w_bits < FULL_PRECISION

    @property
    def quantizes_acts(self) -> bool:
        return self.a_bits < FULL_PRECISION

    @property
    def quantizes_kv(self) -> bool:
        return self.kv_bits < FULL_PRECISION

    @property
    def name(self) -> str:
        """Short bit-width name, e.g. "W4A4KV4", "W4A16", "W16A16"."""
        kv = f"KV{self.kv_bits}" if self.quantizes_kv else ""
        return f"W{self.w_bits}A{self.a_bits}{kv}"

    def __str__(self) -> str:
        parts = [self.name]
        if self.quantizes_weights:
            parts.append(f"g{self.w_group}" if self.w_group else "per-channel")
            clip = "+clip" if self.w_clip_norm == 2 else f"+clip(p={self.w_clip_norm:g})"
            parts.append(self.w_method + (clip if self.w_clip_search else ""))
            parts.append("sym" if self.w_sym else "asym")
        if self.quantizes_acts:
            parts.append(f"a-clip {self.act_clip:g}")
            if self.o_proj_per_head:
                parts.append("o_proj per head")
        if self.embed_bits < FULL_PRECISION:
            parts.append(f"embed{self.embed_bits}")
        if self.lm_head_bits < FULL_PRECISION:
            parts.append(f"lm_head{self.lm_head_bits}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (stored in checkpoint metadata)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """Inverse of `to_dict`; unknown keys raise ValueError. Older metadata's boolean `quantize_lm_head`
        reads as lm_head_bits 4 (true) or 16 (false)."""
        data = dict(data)
        if "quantize_lm_head" in data and "lm_head_bits" not in data:
            data["lm_head_bits"] = 4 if data.pop("quantize_lm_head") else FULL_PRECISION
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown QuantConfig keys {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> QuantConfig:
        """A named preset (FP, W4A16, W4A8KV8, W4A4KV4; case-insensitive), optionally with fields replaced."""
        key = name.strip().upper()
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)


FP = QuantConfig()
W4A16 = QuantConfig(w_bits=4, w_group=32)
W4A8KV8 = QuantConfig(w_bits=4, w_group=32, a_bits=8, kv_bits=8)
W4A4KV4 = QuantConfig(w_bits=4, w_group=32, a_bits=4, kv_bits=4)
PRESETS: dict[str, QuantConfig] = {"FP": FP, "W4A16": W4A16, "W4A8KV8": W4A8KV8, "W4A4KV4": W4A4KV4}
