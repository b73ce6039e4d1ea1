"""FSDP2 (`fully_shard`) for rotation learning: each rank keeps 1/N of the frozen weights.

The loss of `train.rotation_loss`, rebuilt so that every decoder layer is one FSDP unit: the layer's frozen
weights are all-gathered just before it runs, rotated by R1/R2 and fake-quantized there, and freed after it;
the layer is recomputed in backward (activation checkpointing), where FSDP gathers its weights again. The
embedding, final norm and lm_head form the root unit, gathered for the whole step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.utils.checkpoint import checkpoint

from .model import Block, Transformer
from .quant.apply import quant_targets
from .quant.config import QuantConfig
from .quant.quantizer import fake_quant_weight, search_weight_clip
from .rotation import rotate_layer

__all__ = ["ShardedLoss"]


class _RotatedLayer(nn.Module):
    """One decoder layer run with its weights rotated by (R1, r2) and fake-quantized on the fly."""

    def __init__(self, block: Block, index: int, model: Transformer, cfg: QuantConfig, had: bool) -> None:
        super().__init__()
        self.block = block
        self.args, self.cfg, self.had = model.args, cfg, had
        prefix = f"layers.{index}."
        self.targets = [n.removeprefix(prefix) for n, _ in quant_targets(model, cfg) if n.startswith(prefix)]

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], R1: Tensor, r2: Tensor, clips: dict) -> Tensor:
        return checkpoint(self._run, x, rope, R1, r2, clips, use_reentrant=False)

    def rotated(self, R1: Tensor, r2: Tensor) -> dict[str, Tensor]:
        """The layer's (gathered) weights rotated by R1 / r2, names relative to the layer."""
        return rotate_layer({n: p.detach() for n, p in self.block.named_parameters()}, self.args, R1, r2, self.had)

    def _run(self, x: Tensor, rope: tuple[Tensor, Tensor], R1: Tensor, r2: Tensor, clips: dict) -> Tensor:
        w = self.rotated(R1, r2)
        if self.cfg.quantizes_weights:
            for name in self.targets:
                key = f"{name}.weight"
                clip = clips.get(key, 1.0)
                w[key] = fake_quant_weight(w[key], self.cfg.w_bits, self.cfg.w_group, self.cfg.w_sym, clip)
        return torch.func.functional_call(self.block, w, (x, rope))


class ShardedLoss(nn.Module):
    """`rotation_loss(model, cfg, tokens, R1, R2, had)` with the model's weights sharded over the process group.

    Build it inside `train.quantized_for_training`; it shards `model`'s parameters in place (they become
    DTensors), so the model is only usable through this module afterwards.
    """

    def __init__(self, model: Transformer, cfg: QuantConfig, had: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.rope_of = model.rope
        self.embed_tokens, self.norm, self.lm_head = model.embed_tokens, model.norm, model.lm_head
        self.layers = nn.ModuleList(_RotatedLayer(b, i, model, cfg, had) for i, b in enumerate(model.layers))
        self.head_quantized = cfg.quantizes_weights and cfg.quantize_lm_head
        mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
        for layer in self.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)

    @torch.no_grad()
    def weight_clips(self, R1: Tensor, R2: Tensor) -> dict[str, Tensor]:
        """`train.weight_clips` with one layer's weights gathered at a time (the same names and values)."""
        if not (self.cfg.quantizes_weights and self.cfg.w_clip_search):
            return {}
        cfg, clips = self.cfg, {}
        for i, layer in enumerate(self.layers):
            layer.unshard()
            w = layer.rotated(R1.float(), R2[i].float())
            for name in layer.targets:
                clips[f"layers.{i}.{name}.weight"] = search_weight_clip(
                    w[f"{name}.weight"], cfg.w_bits, cfg.w_group, cfg.w_sym
                )
            layer.reshard()
        if self.head_quantized:
            self.unshard()
            head = self.lm_head.weight.detach() @ R1.float()
            clips["lm_head.weight"] = search_weight_clip(head, cfg.w_bits, cfg.w_group, cfg.w_sym)
            self.reshard()
        return clips

    def forward(self, tokens: Tensor, R1: Tensor, R2: Tensor, clips: dict[str, Tensor] | None = None) -> Tensor:
        clips = clips or {}
        uniq, inverse = torch.unique(tokens, return_inverse=True)
        R1f, R2f = R1.float(), R2.float()
        x = F.embedding(inverse, self.embed_tokens.weight.detach()[uniq] @ R1f)
        rope = self.rope_of(tokens.shape[1])
        for i, layer in enumerate(self.layers):
            prefix = f"layers.{i}."
            layer_clips = {k.removeprefix(prefix): v for k, v in clips.items() if k.startswith(prefix)}
            x = layer(x, rope, R1f, R2f[i], layer_clips)
        h = self.norm(x)
        head = self.lm_head
        if head.act_quant is None and not head.online_had and not self.head_quantized:
            logits = F.linear(h @ R1f.T, head.weight.detach(), head.bias)  # see train.py's docstring
        else:
            w = {n: p.detach() for n, p in head.named_parameters()}
            w["weight"] = w["weight"] @ R1f
            if self.head_quantized:
                clip = clips.get("lm_head.weight", 1.0)
                w["weight"] = fake_quant_weight(w["weight"], self.cfg.w_bits, self.cfg.w_group, self.cfg.w_sym, clip)
            logits = torch.func.functional_call(head, w, (h,))
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
