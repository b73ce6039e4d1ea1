"""Estimated peak memory per rank of rotation learning (`spinquant optimize`), from a model's shape.

The terms follow what train.py and fsdp.py keep alive (fp32 weights and activations, float64 rotations):
- frozen weights: every parameter (lm_head untied); with FSDP 1/N of them, plus the root unit (embedding, final
  norm, lm_head) gathered for the whole step and two decoder layers gathered (the running one and the prefetched one)
- step weights: the rotated, fake-quantized copy of every decoder linear and the R1-rotated v/o weights, which
  autograd keeps for backward (with FSDP only one layer's, recomputed in backward), plus one layer's transient copies
  and weight gradients
- activations: what autograd saves per token and layer, for the rank's share of the global batch (ACT_FLOATS,
  counted from our forward); with FSDP only each layer's input, plus one layer while it is recomputed
- logits: LOGIT_FLOATS per token and vocabulary entry (logits, the shifted copy, log-softmax, its gradient)
- rotations: R1 and R2 with gradient, momentum and all-reduce buffer, and the Cayley step's dim x dim temporaries
- runtime: Python, torch, transformers and the tokenizer (RUNTIME_BYTES, measured)
Loading: without FSDP each process holds the checkpoint's tensors as fp32 and the fp32 model at once (LOAD_BYTES);
with FSDP (`fsdp.load_sharded`) a rank holds its 1/N of the fp32 weights plus the rows it is reading of the largest
tensor, twice (the mapped file pages and the fp32 copy).
"""

from __future__ import annotations

import dataclasses

from .model import ModelArgs

__all__ = [
    "PUBLIC_SHAPES",
    "MemoryEstimate",
    "act_floats",
    "estimate_memory",
    "memory_table",
    "n_params",
    "public_shapes",
]

GIB = 2**30
RUNTIME_BYTES = int(0.4 * GIB)  # measured: 0.38 GiB after importing and tokenizing the calibration text
LOAD_BYTES = 8  # per parameter while loading: the fp32 state dict and the fp32 model
LOGIT_FLOATS = 4
CAYLEY_TEMPS = 6  # dim x dim float64 temporaries of one Cayley step (skew matrix, products, the solve)

# Public shapes (HF config fields) of the models the issue names.
_LLAMA3 = dict(
    architectures=["LlamaForCausalLM"], vocab_size=128256, num_key_value_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5
)
PUBLIC_SHAPES: dict[str, dict] = {
    "Llama-3.2-1B": dict(
        _LLAMA3,
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        intermediate_size=8192,
        tie_word_embeddings=True,
    ),
    "Llama-3-8B": dict(
        _LLAMA3, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=14336
    ),
    "Llama-3-70B": dict(
        _LLAMA3, hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, intermediate_size=28672
    ),
}


def public_shapes() -> dict[str, ModelArgs]:
    """PUBLIC_SHAPES read by our config reader (`ModelArgs.from_hf_config`)."""
    from transformers import LlamaConfig

    return {name: ModelArgs.from_hf_config(LlamaConfig(**cfg)) for name, cfg in PUBLIC_SHAPES.items()}


def act_floats(args: ModelArgs) -> int:
    """Floats autograd saves per token in one decoder layer of `rotation_loss` (W4A4KV4: act and KV quantizers on):
    2 quantized linear inputs (one shared by q/k/v, one by gate/up) and 2 norm inputs (dim; autograd's count on the
    tiny shapes is 4 1/3 dim, the third not traced to a tensor), gate/up/silu/product (hidden), q, attention
    output and o_proj input (heads x head_dim), quantized k and v, the attention log-sum-exp per head and 3 norm
    scales."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    return 13 * args.dim // 3 + 4 * args.hidden_dim + 3 * q + 2 * kv + args.n_heads + 3


def _layer_params(args: ModelArgs) -> tuple[int, int, int]:
    """(all parameters, linear weights, step weights kept for backward) of one decoder layer."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    linear = args.dim * (q + 2 * kv) + q * args.dim + 3 * args.dim * args.hidden_dim
    bias = (q + 2 * kv) * args.qkv_bias + args.dim * args.o_bias + (2 * args.hidden_dim + args.dim) * args.mlp_bias
    return linear + bias + 2 * args.dim, linear, linear + args.dim * (q + kv)


def _largest_tensor(args: ModelArgs) -> int:
    """Elements of the model's largest tensor (the embedding, or an MLP or q/o weight)."""
    return args.dim * max(args.vocab_size, args.hidden_dim, args.n_heads * args.head_dim)


def n_params(args: ModelArgs) -> int:
    """Parameters of our Transformer for `args` (lm_head always untied)."""
    return 2 * args.vocab_size * args.dim + args.dim + args.n_layers * _layer_params(args)[0]


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank by term; `train` is the sum of all terms but `load`."""

    frozen: int
    step_weights: int
    activations: int
    logits: int
    rotations: int
    runtime: int
    load: int

    @property
    def train(self) -> int:
        return self.frozen + self.step_weights + self.activations + self.logits + self.rotations + self.runtime

    @property
    def peak(self) -> int:
        return max(self.train, self.load)


def estimate_memory(args: ModelArgs, ranks: int, batch: int, seq_len: int, fsdp: bool) -> MemoryEstimate:
    """Peak bytes per rank of learning rotations for `args` on `ranks` ranks, global batch `batch` x `seq_len`."""
    if batch % ranks:
        raise ValueError(f"batch {batch} must be divisible by ranks {ranks}")
    layer, linear, kept = _layer_params(args)
    root = 2 * args.vocab_size * args.dim + args.dim  # embedding, lm_head (untied), final norm
    total = n_params(args)
    tokens = batch // ranks * seq_len
    if fsdp:
        frozen = 4 * ((total - root) // ranks + root // ranks + root + 2 * layer)
        step_weights = 4 * (kept + 2 * linear)
        activations = 4 * tokens * (args.n_layers * args.dim + act_floats(args) + 2 * args.dim)
    else:
        frozen = 4 * total
        step_weights = 4 * (args.n_layers * kept + 2 * linear)
        activations = 4 * tokens * (args.n_layers * act_floats(args) + 2 * args.dim)
    rotation_numel = args.dim**2 + args.n_layers * args.head_dim**2
    rotations = 8 * (rotation_numel * (3 + (ranks > 1)) + CAYLEY_TEMPS * args.dim**2)
    return MemoryEstimate(
        frozen=frozen,
        step_weights=step_weights,
        activations=activations,
        logits=4 * LOGIT_FLOATS * tokens * args.vocab_size,
        rotations=rotations,
        runtime=RUNTIME_BYTES,
        load=RUNTIME_BYTES + (4 * (total + 2 * _largest_tensor(args)) // ranks if fsdp else LOAD_BYTES * total),
    )


def memory_table(shapes: dict[str, ModelArgs], ranks: tuple[int, ...], batch: int, seq_len: int) -> str:
    """Markdown table: estimated GiB per rank, data parallel vs --fsdp, for each shape and number of ranks."""
    lines = [
        "| model | ranks | data parallel: step | loading | --fsdp: step | loading |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, args in shapes.items():
        for n in ranks:
            dp, fs = (estimate_memory(args, n, batch, seq_len, fsdp) for fsdp in (False, True))
            cells = (dp.train, dp.load, fs.train, fs.load)
            lines.append(f"| {name} | {n} | " + " | ".join(f"{c / GIB:.1f}" for c in cells) + " |")
    return "\n".join(lines)
