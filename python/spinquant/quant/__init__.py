"""Quantization: config and presets, fake quantizers, GPTQ, int4 packing, and `quantize_model`."""

from .apply import AlreadyQuantizedError, quantize_model
from .config import FP, PRESETS, W4A4KV4, W4A8KV8, W4A16, QuantConfig
from .gptq import gptq_quantize, gptq_quantize_model
from .packing import pack_int4, pack_weight, unpack_int4, unpack_weight
from .quantizer import (
    ActQuantizer,
    KVQuantizer,
    QuantizedWeight,
    fake_quant,
    fake_quant_weight,
    quantize_weight_rtn,
)

__all__ = [
    "FP",
    "PRESETS",
    "W4A4KV4",
    "W4A8KV8",
    "W4A16",
    "ActQuantizer",
    "AlreadyQuantizedError",
    "KVQuantizer",
    "QuantConfig",
    "QuantizedWeight",
    "fake_quant",
    "fake_quant_weight",
    "gptq_quantize",
    "gptq_quantize_model",
    "pack_int4",
    "pack_weight",
    "quantize_model",
    "quantize_weight_rtn",
    "unpack_int4",
    "unpack_weight",
]
