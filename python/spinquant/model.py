"""A plain PyTorch LLaMA-family transformer (Llama, Mistral, Qwen2, tied embeddings) with SpinQuant's hooks.

Hugging Face is used only to read a model folder (config, safetensors, tokenizer); the forward pass is
ours, so rotations, online Hadamards and fake quantizers plug in without patching a library. Parameter
names are HF's minus the `model.` prefix. lm_head always has its own tensor: a tied embedding is cloned
at load time, so rotating the embedding never rotates lm_head twice.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hadamard import hadamard_transform

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


FINGERPRINT_TENSORS = ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight")
FINGERPRINT_FLOATS = 4096


class UnsupportedModelError(ValueError):
    """The model folder holds an architecture or feature spinquant cannot run."""


@dataclass(frozen=True)
class ModelArgs:
    """Shape and flavour of a LLaMA-family model."""

    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: str | None = None  # JSON of HF's rope_scaling dict (llama3 type), kept hashable
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    max_seq_len: int = 2048

    @classmethod
    def from_hf_config(cls, cfg) -> ModelArgs:
        """Read an HF `PretrainedConfig`; raise UnsupportedModelError naming what is not supported."""
        archs = list(getattr(cfg, "architectures", None) or [])
        arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise UnsupportedModelError(
                f"architecture {archs or cfg.model_type!r} is not supported; spinquant runs "
                f"{', '.join(SUPPORTED_ARCHITECTURES)} (LLaMA-family decoders with RMSNorm, RoPE and SwiGLU)"
            )
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act={cfg.hidden_act!r} is not supported; only SwiGLU ('silu')")
        rope_scaling = _rope_scaling(cfg)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        window = getattr(cfg, "sliding_window", None)
        if arch == "qwen2" and not getattr(cfg, "use_sliding_window", False):
            window = None
        attention_bias = bool(getattr(cfg, "attention_bias", False))
        return cls(
            arch=arch,
            vocab_size=cfg.vocab_size,
            dim=cfg.hidden_size,
            n_layers=cfg.num_hidden_layers,
            n_heads=cfg.num_attention_heads,
            n_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=head_dim,
            hidden_dim=cfg.intermediate_size,
            norm_eps=cfg.rms_norm_eps,
            rope_theta=float(_rope_theta(cfg)),
            rope_scaling=json.dumps(rope_scaling, sort_keys=True) if rope_scaling else None,
            qkv_bias=arch == "qwen2" or attention_bias,
            o_bias=arch == "llama" and attention_bias,
            mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
            sliding_window=window,
            tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            max_seq_len=int(getattr(cfg, "max_position_embeddings", 2048)),
        )


def _rope_params(cfg) -> dict:
    params = getattr(cfg, "rope_parameters", None)
    return dict(params) if isinstance(params, dict) else {}


def _rope_theta(cfg) -> float:
    return _rope_params(cfg).get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0


def _rope_scaling(cfg) -> dict | None:
    scaling = dict(getattr(cfg, "rope_scaling", None) or _rope_params(cfg))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise UnsupportedModelError(f"rope_scaling type {kind!r} is not supported; only default and llama3")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return {"rope_type": "llama3", **{k: scaling[k] for k in keys}}


def rope_inv_freq(args: ModelArgs) -> Tensor:
    """Inverse RoPE frequencies (float64), with llama3 frequency scaling when configured."""
    inv = 1.0 / args.rope_theta ** (torch.arange(0, args.head_dim, 2, dtype=torch.float64) / args.head_dim)
    if args.rope_scaling is None:
        return inv
    s = json.loads(args.rope_scaling)
    low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
    wavelen = 2 * math.pi / inv
    smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
        s["high_freq_factor"] - s["low_freq_factor"]
    )
    scaled = torch.where(wavelen > low_wavelen, inv / s["factor"], inv)
    mid = (1 - smooth) * inv / s["factor"] + smooth * inv
    return torch.where((wavelen <= low_wavelen) & (wavelen >= high_wavelen), mid, scaled)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding in HF's rotate-half layout; x is [B, H, T, D], cos/sin are [T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dim."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class RMSNorm(nn.Module):
    """Root-mean-square norm; after norm fusion its weight is all ones."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class QLinear(nn.Linear):
    """nn.Linear with SpinQuant's hooks: an online Hadamard (R4) and a fake activation quantizer on the input;
    lm_head sharing an 8-bit table with the embedding first multiplies its input by `pre` (see quant.ends)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.online_had = False
        self.act_quant: Callable[[Tensor], Tensor] | None = None
        self.wq = None  # QuantizedWeight once quant.apply has quantized this layer
        self.pre: Tensor | None = None  # [in, in]: x @ pre before everything else

    def prepare_input(self, x: Tensor) -> Tensor:
        """What the weight multiplies: the input after `pre`, the online Hadamard and the activation quantizer."""
        if self.pre is not None:
            x = x @ self.pre
        if self.online_had:
            x = hadamard_transform(x)
        if self.act_quant is not None:
            x = self.act_quant(x)
        return x

    def input_key(self) -> tuple | None:
        """What `prepare_input` does, as a comparable key (None: `pre` makes it this layer's own)."""
        if self.pre is not None:
            return None
        quant = self.act_quant  # an ActQuantizer compares by its settings, any other callable by identity
        return self.online_had, None if quant is None else getattr(quant, "key", quant)

    def forward(self, x: Tensor, prepared: Tensor | None = None) -> Tensor:
        """y = prepare_input(x) W^T + b; `prepared` (= prepare_input(x) from a linear with the same input_key)
        skips the preparation. Forward pre-hooks still see x first."""
        return F.linear(self.prepare_input(x) if prepared is None else prepared, self.weight, self.bias)


def shared_input(x: Tensor, linears: tuple[QLinear, ...]) -> Tensor | None:
    """prepare_input(x), computed once, when every linear of `linears` prepares its input alike; else None."""
    key = linears[0].input_key()
    if key is None or key == (False, None) or any(m.input_key() != key for m in linears[1:]):
        return None
    return linears[0].prepare_input(x)


class Attention(nn.Module):
    """Grouped-query causal self-attention with an optional R3 Hadamard on q/k and fake KV quantizers."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.sliding_window = args.sliding_window
        self.q_proj = QLinear(args.dim, args.n_heads * args.head_dim, bias=args.qkv_bias)
        self.k_proj = QLinear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.v_proj = QLinear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.o_proj = QLinear(args.n_heads * args.head_dim, args.dim, bias=args.o_bias)
        self.r3 = False
        self.k_quant: Callable[[Tensor], Tensor] | None = None
        self.v_quant: Callable[[Tensor], Tensor] | None = None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None = None) -> Tensor:
        """Causal attention over x [B, T, dim]; a boolean `mask` [B, T, T] (True = may attend) replaces the
        causal (and sliding-window) mask."""
        b, t, _ = x.shape
        xq = shared_input(x, (self.q_proj, self.k_proj, self.v_proj))
        q = self.q_proj(x, xq).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x, xq).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x, xq).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.r3:
            q, k = hadamard_transform(q), hadamard_transform(k)
        if self.k_quant is not None:
            k = self.k_quant(k)
        if self.v_quant is not None:
            v = self.v_quant(v)
        gqa = self.n_heads != self.n_kv_heads
        if mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=gqa)
        elif self.sliding_window is not None and t > self.sliding_window:
            pos = torch.arange(t, device=x.device)
            dist = pos[:, None] - pos[None, :]
            mask = (dist >= 0) & (dist < self.sliding_window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = QLinear(args.dim, args.hidden_dim, bias=args.mlp_bias)
        self.up_proj = QLinear(args.dim, args.hidden_dim, bias=args.mlp_bias)
        self.down_proj = QLinear(args.hidden_dim, args.dim, bias=args.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        xq = shared_input(x, (self.gate_proj, self.up_proj))
        return self.down_proj(F.silu(self.gate_proj(x, xq)) * self.up_proj(x, xq))


class Block(nn.Module):
    """One pre-norm decoder layer."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """The whole decoder: embedding, blocks, final norm, lm_head."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = QLinear(args.dim, args.vocab_size)
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)
        self.identity: dict = {}

    def rope(self, seq_len: int) -> tuple[Tensor, Tensor]:
        """(cos, sin) tables of shape [seq_len, head_dim] for Block.forward."""
        return self.rope_at(torch.arange(seq_len, device=self.inv_freq.device))

    def rope_at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(cos, sin) tables of shape [*positions.shape, head_dim] at the given token positions."""
        freqs = positions.to(torch.float64)[..., None] * self.inv_freq.to(torch.float64)
        emb = torch.cat((freqs, freqs), dim=-1)
        dtype = self.embed_tokens.weight.dtype
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, tokens: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        """Logits [B, T, V]; `weights` replaces parameters by name for this call only."""
        if weights is not None:
            return torch.func.functional_call(self, weights, (tokens,), strict=False)
        return self.lm_head(self.hidden(tokens))

    def hidden(self, tokens: Tensor, positions: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """lm_head's input [B, T, dim]: the final-norm hidden states. `positions` [B, T] and a boolean
        attention `mask` [B, T, T] (True = may attend) replace 0..T-1 and the causal mask, e.g. to score
        several continuations of one shared prefix packed into one sequence."""
        x = self.embed_tokens(tokens)
        if positions is None:
            rope = self.rope(tokens.shape[1])
        else:
            cos, sin = self.rope_at(positions)
            rope = (cos[:, None], sin[:, None])  # broadcast over heads
        if mask is not None and self.args.sliding_window is not None:
            pos = positions if positions is not None else torch.arange(tokens.shape[1])[None]
            mask = mask & (pos[:, :, None] - pos[:, None, :] < self.args.sliding_window)
        for layer in self.layers:
            x = layer(x, rope, mask)
        return self.norm(x)

    def linears(self) -> Iterator[tuple[str, QLinear]]:
        """Every QLinear with its name (e.g. "layers.3.mlp.down_proj"), lm_head last."""
        for name, module in self.named_modules():
            if isinstance(module, QLinear) and name != "lm_head":
                yield name, module
        yield "lm_head", self.lm_head


def read_args(path: str | Path) -> ModelArgs:
    """ModelArgs of a local HF model folder."""
    from transformers import AutoConfig

    return ModelArgs.from_hf_config(AutoConfig.from_pretrained(str(path)))


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """All tensors of an HF folder (safetensors, or pytorch_model*.bin), float32, `model.` prefix removed."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    tensors: dict[str, Tensor] = {}
    if files:
        for f in files:
            tensors.update(load_file(str(f)))
    else:
        bins = sorted(path.glob("pytorch_model*.bin"))
        if not bins:
            raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {path}")
        for f in bins:
            tensors.update(torch.load(f, map_location="cpu", weights_only=True))
    return {k.removeprefix("model."): v.float() for k, v in tensors.items()}


def build_model(args: ModelArgs, state: dict[str, Tensor]) -> Transformer:
    """A Transformer holding `state`; a tied or missing lm_head is cloned from the embedding."""
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device="cpu")
    model.inv_freq = rope_inv_freq(args)
    state = dict(state)
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["embed_tokens.weight"].clone()
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if "rotary_emb" not in k]
    if missing or unexpected:
        raise UnsupportedModelError(
            f"weights do not match a {args.arch} model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.identity = model_identity(model)
    return model.eval()


def load_transformer(path: str | Path) -> Transformer:
    """Our Transformer holding the fp32 weights of a local HF folder."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json); pass --model PATH")
    model = build_model(read_args(folder), load_state_dict(folder))
    model.identity["name"] = folder.name
    return model


def load_model(path: str | Path | None = None, sharded: bool = False):
    """(Transformer, tokenizer) from a local HF folder; None loads the default SmolLM2-135M offline.

    `sharded`: fused and FSDP-sharded over the process group, each rank reading only its rows (`fsdp.load_sharded`).
    """
    from transformers import AutoTokenizer

    from . import assets

    folder = Path(path) if path is not None else assets.default_model_dir()
    if sharded:
        from .fsdp import load_sharded

        model = load_sharded(folder)
    else:
        model = load_transformer(folder)
    return model, AutoTokenizer.from_pretrained(str(folder))


def model_identity(model: Transformer) -> dict:
    """Architecture, shapes and a fingerprint of the original weights, to refuse files made for another model."""
    return weights_identity(model.args, {name: model.get_parameter(name) for name in FINGERPRINT_TENSORS})


def weights_identity(args: ModelArgs, tensors: dict[str, Tensor]) -> dict:
    """`model_identity` from the FINGERPRINT_TENSORS (only their first FINGERPRINT_FLOATS values are read)."""
    digest = hashlib.sha256()
    for name in FINGERPRINT_TENSORS:
        digest.update(tensors[name].detach().float().flatten()[:FINGERPRINT_FLOATS].numpy().tobytes())
    fields = asdict(args)
    return {"arch": fields["arch"], "args": fields, "fingerprint": digest.hexdigest()[:16]}


def tiny_args(arch: str = "llama", **overrides) -> ModelArgs:
    """Shapes of a tiny model for tests: 2 layers, dim 64, GQA 4/2 heads of 16, MLP 96 (= 12 * 8)."""
    base = dict(
        arch=arch,
        vocab_size=256,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        hidden_dim=96,
        norm_eps=1e-5,
        rope_theta=10000.0,
        qkv_bias=arch == "qwen2",
        max_seq_len=256,
    )
    base.update(overrides)
    return ModelArgs(**base)


def tiny_model(arch: str = "llama", seed: int = 0, **overrides) -> Transformer:
    """A random tiny model (non-trivial norm weights and biases) for tests."""
    args = tiny_args(arch, **overrides)
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(args)
    state = {}
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight") or "layernorm" in name:
            state[name] = 1.0 + 0.3 * torch.randn(p.shape, generator=gen)
        else:
            state[name] = 0.08 * torch.randn(p.shape, generator=gen)
    if args.tie_word_embeddings:
        del state["lm_head.weight"]
    return build_model(args, state)
