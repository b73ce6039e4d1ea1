"""The standard ExecuTorch path that `spinquant bench` compares against, built from the same fp32 model.

`StandardDecoder` follows ExecuTorch's own llama recipe (examples/models/llama with `--use_sdpa_with_kv_cache`
and the custom KV cache): RMSNorm, RoPE, SiLU and the residual adds as plain PyTorch ops, the KV cache as
[1, S, Hkv, D] buffers written by `llama::update_cache`, attention by `llama::custom_sdpa`. `xnnpack_8da4w`
then quantizes every linear with torchao's 8da4w (int8 dynamic activations, int4 weights, group 32) and lowers
them to XNNPACK (`export_xnnpack_8da4w`): what a user of ExecuTorch gets for this model without spinquant. Its
forward has our programs' signature, so the same runners time it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinquant.model import apply_rope, rms_norm

from .exportable import float_linear, logit_rows_of


def load_llama_ops() -> None:
    """Register ExecuTorch's llama custom ops (torch.ops.llama.*) for export and in the runtime."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [1, T, H, D], cos/sin [T, D] (rotate-half, as HF and the llama recipe's HF RoPE)."""
    return apply_rope(x, cos[:, None], sin[:, None])


class StandardBlock(nn.Module):
    """One decoder layer in standard ops with the llama recipe's SDPA-with-KV-cache custom ops."""

    def __init__(self, block, max_seq_len: int, eps: float):
        super().__init__()
        attn = block.self_attn
        self.eps, self.n_heads, self.n_kv_heads, self.head_dim = eps, attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.attn_norm = nn.Buffer(block.input_layernorm.weight.detach().float().clone())
        self.mlp_norm = nn.Buffer(block.post_attention_layernorm.weight.detach().float().clone())
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            float_linear(getattr(attn, p)) for p in ("q_proj", "k_proj", "v_proj", "o_proj")
        )
        mlp = block.mlp
        self.gate_proj, self.up_proj, self.down_proj = (
            float_linear(getattr(mlp, p)) for p in ("gate_proj", "up_proj", "down_proj")
        )
        self.register_buffer("k_cache", torch.zeros(1, max_seq_len, self.n_kv_heads, self.head_dim))
        self.register_buffer("v_cache", torch.zeros(1, max_seq_len, self.n_kv_heads, self.head_dim))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start_pos: int) -> Tensor:
        t, hd = x.shape[1], self.head_dim
        h = rms_norm(x, self.attn_norm, self.eps)
        q = _rope(self.q_proj(h).view(1, t, self.n_heads, hd), cos, sin)
        k = _rope(self.k_proj(h).view(1, t, self.n_kv_heads, hd), cos, sin)
        v = self.v_proj(h).view(1, t, self.n_kv_heads, hd)
        torch.ops.llama.update_cache(k, self.k_cache, start_pos)
        torch.ops.llama.update_cache(v, self.v_cache, start_pos)
        out = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start_pos, None, 0, True)
        x = x + self.o_proj(out.view(1, t, self.n_heads * hd))
        h = rms_norm(x, self.mlp_norm, self.eps)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class StandardDecoder(nn.Module):
    """forward(tokens [1, T], input_pos [T], logit_rows [R]) -> logits [1, R, V], KV cache in mutable buffers (llama
    recipe; like ExecuTorch's llama export, which by default returns the last position's logits only, it computes the
    lm_head for the rows asked)."""

    def __init__(self, model, max_seq_len: int):
        super().__init__()
        load_llama_ops()
        args = model.args
        self.max_seq_len, self.eps = max_seq_len, args.norm_eps
        self.embed = nn.Embedding.from_pretrained(model.embed_tokens.weight.detach().float().clone())
        cos, sin = model.rope(max_seq_len)
        self.cos, self.sin = nn.Buffer(cos.float().contiguous()), nn.Buffer(sin.float().contiguous())
        self.layers = nn.ModuleList(StandardBlock(b, max_seq_len, args.norm_eps) for b in model.layers)
        self.norm = nn.Buffer(model.norm.weight.detach().float().clone())
        self.lm_head = float_linear(model.lm_head)

    def forward(self, tokens: Tensor, input_pos: Tensor, logit_rows: Tensor | None = None) -> Tensor:
        start_pos = input_pos[0].item()
        torch._check(start_pos >= 0)
        torch._check(start_pos < self.max_seq_len)
        x = self.embed(tokens)
        cos, sin = self.cos[input_pos], self.sin[input_pos]
        for layer in self.layers:
            x = layer(x, cos, sin, start_pos)
        return self.lm_head(rms_norm(logit_rows_of(x[0], logit_rows)[None], self.norm, self.eps))


def export_xnnpack_8da4w(decoder: nn.Module, path: Path, meta: dict) -> None:
    """Quantize every nn.Linear of an fp32 decoder with torchao 8da4w (int8 dynamic activations, int4 weights,
    group 32), lower them to XNNPACK and write the program to `path` (atomically)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    from .exporter import to_program, write_program

    cfg = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32))
    quantize_(decoder.eval(), cfg, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    program = to_program(decoder, meta, xnnpack=True)
    write_program(path, program)
