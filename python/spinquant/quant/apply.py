"""`quantize_model`: quantize a model's weights in place and attach activation and KV-cache fake quantizers.

Weights first (RTN, or GPTQ on calibration tokens with Hessians of the unquantized activations, as QuaRot
and SpinQuant do), then an `ActQuantizer` on the input of every decoder linear (per token, all linears
alike, matching the kernels' per-token activation quantization; o_proj per token and head with
`cfg.o_proj_per_head`, as the official code) and `KVQuantizer`s on every attention.
lm_head joins the decoder linears at `cfg.lm_head_bits` 4; the 8-bit embedding and lm_head are `quant.ends`'.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from .config import QuantConfig
from .ends import head_act_quantizer, quantize_ends
from .gptq import gptq_quantize_model
from .quantizer import ActQuantizer, KVQuantizer, quantize_weight_rtn, set_weight


class AlreadyQuantizedError(ValueError):
    """quantize_model was given a model that already carries quantized weights or quantizers."""


def quant_targets(model: nn.Module, cfg: QuantConfig) -> Iterator[tuple[str, nn.Linear]]:
    """The linears `cfg` quantizes like the decoder's: every decoder QLinear, plus lm_head at lm_head_bits 4."""
    for name, module in model.linears():
        if name != "lm_head" or cfg.lm_head_bits == 4:
            yield name, module


def _check_not_quantized(model: nn.Module) -> None:
    for name, module in model.linears():
        for attr in ("wq", "act_quant"):
            if getattr(module, attr, None) is not None:
                raise AlreadyQuantizedError(
                    f"{name}.{attr} is already set: this model is already quantized; "
                    "quantize a freshly loaded (or rotated, unquantized) model instead"
                )
    for i, layer in enumerate(model.layers):
        for attr in ("k_quant", "v_quant"):
            if getattr(layer.self_attn, attr, None) is not None:
                raise AlreadyQuantizedError(
                    f"layers.{i}.self_attn.{attr} is already set: this model is already quantized; "
                    "quantize a freshly loaded (or rotated, unquantized) model instead"
                )


def quantize_model(
    model: nn.Module, cfg: QuantConfig, calib_tokens: Tensor | None = None, progress: bool = True
) -> nn.Module:
    """Quantize `model` in place as `cfg` says (GPTQ needs calib_tokens [samples, seq_len]); returns it."""
    _check_not_quantized(model)
    quantize_weights(model, cfg, calib_tokens, progress)
    return attach_quantizers(model, cfg)


def quantize_weights(
    model: nn.Module, cfg: QuantConfig, calib_tokens: Tensor | None = None, progress: bool = True
) -> nn.Module:
    """Only the weight half of `quantize_model` (RTN or GPTQ in place). GPTQ sees unquantized activations, so
    one weight-quantized model serves every activation/KV setting: copy it, then `attach_quantizers`."""
    if not cfg.quantizes_weights:
        return model
    if cfg.w_method == "gptq":
        if calib_tokens is None:
            raise ValueError(
                "w_method='gptq' needs calibration data: pass calib_tokens "
                "(a LongTensor [samples, seq_len], e.g. 128 x 512 tokens), or use w_method='rtn'"
            )
        gptq_quantize_model(model, cfg, calib_tokens, progress=progress)
    else:
        for _, module in quant_targets(model, cfg):
            qw = quantize_weight_rtn(
                module.weight, cfg.w_bits, cfg.w_group, cfg.w_sym, cfg.w_clip_search, cfg.w_clip_norm
            )
            set_weight(module, qw)
    quantize_ends(model, cfg)
    return model


def attach_quantizers(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """The activation and KV-cache fake quantizers of `cfg` (weights untouched); sets `model.quant_config`."""
    if not cfg.quantizes_weights and cfg.lm_head_bits == 8:  # float weights (rotation learning quantizes per step)
        model.lm_head.act_quant = head_act_quantizer()
    if cfg.quantizes_acts:
        for name, module in quant_targets(model, cfg):
            group = model.args.head_dim if cfg.o_proj_per_head and name.endswith("o_proj") else 0
            module.act_quant = ActQuantizer(cfg.a_bits, cfg.a_sym, cfg.act_clip, group)
    if cfg.quantizes_kv:
        for layer in model.layers:
            layer.self_attn.k_quant = KVQuantizer(cfg.kv_bits, cfg.kv_group, cfg.kv_sym)
            layer.self_attn.v_quant = KVQuantizer(cfg.kv_bits, cfg.kv_group, cfg.kv_sym)
    model.quant_config = cfg
    return model
