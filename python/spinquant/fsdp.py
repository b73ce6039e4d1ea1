"""FSDP2 (`fully_shard`) for rotation learning: each rank keeps 1/N of the frozen weights.

`shard_model` lays the model out so that every decoder layer is one FSDP unit and the embedding, final norm and
lm_head form the root unit; `load_sharded` builds that layout on the meta device and fills each rank's rows
straight from the safetensors files, so no process ever holds the whole model. `ShardedLoss` is the loss of
`train.rotation_loss` on that layout: a layer's frozen weights are all-gathered just before it runs, rotated by
R1/R2 and fake-quantized there, and freed after it; the layer is recomputed in backward (activation
checkpointing), where FSDP gathers its weights again. The root unit is gathered for the whole step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.utils.checkpoint import checkpoint

from .model import (
    FINGERPRINT_FLOATS,
    FINGERPRINT_TENSORS,
    Block,
    ModelArgs,
    Transformer,
    UnsupportedModelError,
    read_args,
    rope_inv_freq,
    weights_identity,
)
from .quant.apply import quant_targets
from .quant.config import QuantConfig
from .quant.quantizer import fake_quant_weight, search_weight_clip
from .rotation import rotate_layer

__all__ = ["ShardedLoss", "ShardedModel", "is_sharded", "load_sharded", "shard_model"]

# Fused norms: each RMSNorm's scale multiplies the columns of the linears that read its output (rotation/fuse.py).
_NORM_OF = {
    "self_attn.q_proj.weight": "input_layernorm.weight",
    "self_attn.k_proj.weight": "input_layernorm.weight",
    "self_attn.v_proj.weight": "input_layernorm.weight",
    "mlp.gate_proj.weight": "post_attention_layernorm.weight",
    "mlp.up_proj.weight": "post_attention_layernorm.weight",
}


class _Layer(nn.Module):
    """One decoder layer as an FSDP unit: `forward(fn, *args)` runs `fn(block, *args)`, recomputed in backward."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, fn: Callable[..., Tensor], *args) -> Tensor:
        return checkpoint(fn, self.block, *args, use_reentrant=False)


class ShardedModel(nn.Module):
    """The FSDP2 layout of a Transformer: one unit per decoder layer, the rest the root unit.

    It shares the Transformer's modules, whose parameters become DTensors sharded on dim 0 (Shard(0)).
    `forward(fn, *args)` runs `fn(self, *args)` with the root unit gathered.
    """

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.args = model.args
        self.embed_tokens, self.norm, self.lm_head = model.embed_tokens, model.norm, model.lm_head
        self.layers = nn.ModuleList(_Layer(b) for b in model.layers)
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in self.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def forward(self, fn: Callable[..., Tensor], *args) -> Tensor:
        return fn(self, *args)


def shard_model(model: Transformer) -> ShardedModel:
    """Shard `model`'s parameters in place over the process group (once; later calls return the same layout)."""
    if not is_sharded(model):  # kept out of the module tree: not a submodule of the model
        model.__dict__["sharded"] = ShardedModel(model)
    return model.__dict__["sharded"]


def is_sharded(model: Transformer) -> bool:
    """True once `shard_model` (or `load_sharded`) has sharded `model`."""
    return "sharded" in model.__dict__


def _run_layer(
    block: Block, x: Tensor, rope: tuple[Tensor, Tensor], R1: Tensor, r2: Tensor, clips: dict, loss: ShardedLoss
) -> Tensor:
    """One decoder layer with its (gathered) weights rotated by (R1, r2) and fake-quantized on the fly."""
    w = loss.rotated(block, R1, r2)
    cfg = loss.cfg
    if cfg.quantizes_weights:
        for name in loss.targets:
            key = f"{name}.weight"
            w[key] = fake_quant_weight(w[key], cfg.w_bits, cfg.w_group, cfg.w_sym, clips.get(key, 1.0))
    return torch.func.functional_call(block, w, (x, rope))


class ShardedLoss:
    """`rotation_loss(model, cfg, tokens, R1, R2, had)` with the model's weights sharded over the process group.

    Build it inside `train.quantized_for_training`; `model` is sharded in place (`shard_model`) unless it already
    is (`load_sharded`), so it is only usable through this loss afterwards.
    """

    def __init__(self, model: Transformer, cfg: QuantConfig, had: bool) -> None:
        self.cfg, self.had, self.rope_of = cfg, had, model.rope
        self.model = shard_model(model)
        self.targets = [n.removeprefix("layers.0.") for n, _ in quant_targets(model, cfg) if n.startswith("layers.0.")]
        self.head_quantized = cfg.quantizes_weights and cfg.lm_head_bits == 4

    def rotated(self, block: Block, R1: Tensor, r2: Tensor) -> dict[str, Tensor]:
        """A block's (gathered) weights rotated by R1 / r2, names relative to the block."""
        weights = {n: p.detach() for n, p in block.named_parameters()}
        return rotate_layer(weights, self.model.args, R1, r2, self.had)

    @torch.no_grad()
    def weight_clips(self, R1: Tensor, R2: Tensor) -> dict[str, Tensor]:
        """`train.weight_clips` with one layer's weights gathered at a time (the same names and values)."""
        if not (self.cfg.quantizes_weights and self.cfg.w_clip_search):
            return {}
        cfg, clips = self.cfg, {}
        for i, layer in enumerate(self.model.layers):
            layer.unshard()
            w = self.rotated(layer.block, R1.float(), R2[i].float())
            for name in self.targets:
                clips[f"layers.{i}.{name}.weight"] = search_weight_clip(
                    w[f"{name}.weight"], cfg.w_bits, cfg.w_group, cfg.w_sym, cfg.w_clip_norm
                )
            layer.reshard()
        if self.head_quantized:
            self.model.unshard()
            head = self.model.lm_head.weight.detach() @ R1.float()
            clips["lm_head.weight"] = search_weight_clip(head, cfg.w_bits, cfg.w_group, cfg.w_sym, cfg.w_clip_norm)
            self.model.reshard()
        return clips

    def __call__(self, tokens: Tensor, R1: Tensor, R2: Tensor, clips: dict[str, Tensor] | None = None) -> Tensor:
        return self.model(self._loss, tokens, R1, R2, clips or {})

    def _loss(self, root: ShardedModel, tokens: Tensor, R1: Tensor, R2: Tensor, clips: dict[str, Tensor]) -> Tensor:
        uniq, inverse = torch.unique(tokens, return_inverse=True)
        R1f, R2f = R1.float(), R2.float()
        x = F.embedding(inverse, root.embed_tokens.weight.detach()[uniq] @ R1f)
        rope = self.rope_of(tokens.shape[1])
        for i, layer in enumerate(root.layers):
            prefix = f"layers.{i}."
            layer_clips = {k.removeprefix(prefix): v for k, v in clips.items() if k.startswith(prefix)}
            x = layer(_run_layer, x, rope, R1f, R2f[i], layer_clips, self)
        h = root.norm(x)
        head = root.lm_head
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


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Which safetensors file of `folder` holds each tensor (one `model.safetensors` or an indexed set of shards)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"--fsdp loads safetensors only: no *.safetensors in {folder}")
    where = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            where.update(dict.fromkeys(st.keys(), f))
    return where


class _Reader:
    """Rows of the tensors of an HF folder by our parameter names, as float32 (a tied lm_head reads the embedding)."""

    def __init__(self, folder: Path) -> None:
        self.where = {k.removeprefix("model."): (f, k) for k, f in _tensor_files(folder).items()}
        if "lm_head.weight" not in self.where and "embed_tokens.weight" in self.where:
            self.where["lm_head.weight"] = self.where["embed_tokens.weight"]

    def rows(self, name: str, start: int | None = None, stop: int | None = None) -> Tensor:
        """Rows start:stop of tensor `name`, read without loading the rest of its file."""
        if name not in self.where:
            raise UnsupportedModelError(f"weights do not match the model: {name} is missing")
        file, key = self.where[name]
        with safe_open(str(file), framework="pt") as st:
            return st.get_slice(key)[start:stop].float()


def _norm_of(name: str) -> str | None:
    """The RMSNorm whose scale is fused into parameter `name`'s columns, if any."""
    if name == "lm_head.weight":
        return "norm.weight"
    layer, _, rest = name.partition(".")[2].partition(".")
    return f"layers.{layer}.{_NORM_OF[rest]}" if name.startswith("layers.") and rest in _NORM_OF else None


@torch.no_grad()
def _fill(param: Tensor, name: str, reader: _Reader) -> None:
    """Copy this rank's rows of `name`, with its norm's scale fused into them (norm weights become ones)."""
    local = param.to_local()
    if name.endswith("norm.weight"):
        local.fill_(1.0)
        return
    start = param.__create_chunk_list__()[0].offsets[0] if local.numel() else 0
    local.copy_(reader.rows(name, start, start + local.shape[0]))
    norm = _norm_of(name)
    if norm is not None:
        local.mul_(reader.rows(norm))  # fp32 product == fuse_norms' fp64 product rounded to fp32


def _identity(args: ModelArgs, reader: _Reader, folder: Path) -> dict:
    """`model.model_identity` of the unfused model, from the first rows of the files."""
    rows = -(-FINGERPRINT_FLOATS // args.dim)
    first = {name: reader.rows(name, 0, rows) for name in FINGERPRINT_TENSORS}
    return {**weights_identity(args, first), "name": folder.name}


def load_sharded(folder: str | Path) -> Transformer:
    """The fused Transformer of an HF folder, FSDP-sharded over the process group as `ShardedLoss` uses it.

    Built on the meta device; each rank allocates and reads only the rows of its own shards.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("fsdp needs a torch.distributed process group: launch with torchrun")
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json); pass --model PATH")
    args = read_args(folder)
    with torch.device("meta"):
        model = Transformer(args)
    shard_model(model)
    model.to_empty(device="cpu")
    model.inv_freq = rope_inv_freq(args)
    reader = _Reader(folder)
    for name, param in model.named_parameters():
        _fill(param, name, reader)
    model.identity = _identity(args, reader, folder)
    model.norms_fused = True
    return model.eval()
