"""Named recipes: every setting of learning rotations, quantizing and evaluating, with where it comes from.

- `official`: the settings of the official SpinQuant code (github facebookresearch/SpinQuant), for
  comparing with the paper. Sources are named per setting: `scripts/10_optimize_rotation.sh` (learning),
  `scripts/2_eval_ptq.sh` + `utils/process_args.py` (quantizer flags and their defaults),
  `eval_utils/main.py` (per-layer activation settings, GPTQ calibration), `utils/quant_utils.py`
  (weight clip search), the README (learn at W16A4KV4 when GPTQ follows).
- `device`: what a phone runs with our kernels, exactly: int4 weights in groups of 32 (symmetric, fp16
  scales), activations 8-bit (or 4-bit) per token over all channels, an 8-bit (or 4-bit) KV cache per head
  and token, and 8-bit ends (embedding per row, lm_head per channel with 8-bit activations).

Both learn R1/R2 once, at their A4KV4 setting with unquantized weights (GPTQ quantizes the weights
afterwards and corrects their error itself), and reuse the rotations at every precision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .quant.config import QuantConfig

__all__ = ["RECIPES", "WEIGHT_FIELDS", "Recipe", "TrainBudget", "recipe"]

# The weight quantizer's settings: equal at every precision of a recipe, so that one weight-quantized
# model (GPTQ's Hessians come from unquantized activations) serves them all.
WEIGHT_FIELDS = (
    "w_bits", "w_group", "w_sym", "w_clip_search", "w_clip_norm", "w_method", "embed_bits", "lm_head_bits",
    "gptq_damp", "gptq_block", "gptq_act_order", "gptq_dtype",
)  # fmt: skip


@dataclass(frozen=True)
class TrainBudget:
    """Rotation learning at full scale: Cayley SGD steps, sequences per step, tokens per sequence, ..."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    grad_clip: float | None

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


@dataclass(frozen=True)
class Recipe:
    """A named set of quantization settings: the learning target, the evaluated precisions, the budgets."""

    name: str
    summary: str
    learn: QuantConfig  # what the rotation loss fake-quantizes
    precisions: dict[str, QuantConfig]  # evaluated settings by name (W4A16, W4A8KV8, W4A4KV4)
    train: TrainBudget
    gptq_samples: int
    gptq_seq_len: int

    def __post_init__(self) -> None:
        weights = {tuple(getattr(c, f) for f in WEIGHT_FIELDS) for c in self.precisions.values()}
        if len(weights) != 1:
            raise ValueError(f"recipe {self.name!r}: every precision must quantize the weights alike")

    def config(self, precision: str, **overrides) -> QuantConfig:
        """The recipe's QuantConfig at `precision` (case-insensitive), optionally with fields replaced."""
        key = precision.strip().upper()
        if key not in self.precisions:
            raise ValueError(
                f"recipe {self.name!r} has no precision {precision!r}; choose one of {', '.join(self.precisions)}"
            )
        return dataclasses.replace(self.precisions[key], **overrides)


def _official(a_bits: int, kv_bits: int) -> QuantConfig:
    return QuantConfig(
        w_bits=4,
        w_group=0,  # per output channel: 2_eval_ptq.sh passes no --w_groupsize (process_args.py default -1)
        w_sym=True,  # no --w_asym in 2_eval_ptq.sh
        w_clip_search=True,  # --w_clip in 2_eval_ptq.sh
        w_clip_norm=2.4,  # quant_utils.py WeightQuantizer.find_params(mse): norm 2.4, grid 100, maxshrink 0.8
        w_method="gptq",  # no --w_rtn in 2_eval_ptq.sh
        a_bits=a_bits,
        a_sym=False,  # --a_asym in 2_eval_ptq.sh
        a_clip=1.0,  # process_args.py: --a_clip_ratio default 1.0
        o_proj_per_head=a_bits < 16,  # eval_utils/main.py: o_proj input groupsize = head_dim
        kv_bits=kv_bits,
        kv_group=0,  # k/v_groupsize 128 = head_dim of Llama 2/3 (2_eval_ptq.sh); v_proj groupsize = head_dim
        kv_sym=False,  # --k_asym --v_asym in 2_eval_ptq.sh
        lm_head_bits=16,  # eval_utils/main.py: lm_head activations 16-bit, GPTQ skips lm_head
        embed_bits=16,  # the embedding is never quantized there
        gptq_damp=0.01,  # process_args.py: --percdamp 0.01
        gptq_block=128,  # gptq_utils.py: blocksize 128
        gptq_act_order=False,  # process_args.py: --act_order default False
        gptq_dtype="bf16",  # 2_eval_ptq.sh --bf16 True: ptq.py loads the model in bf16 for GPTQ's forward
    )


def _device(a_bits: int, kv_bits: int) -> QuantConfig:
    # The kernels: int4 g32 symmetric weights with fp16 scales (docs/INT4_FORMAT.md), activations asymmetric
    # per token over all channels, KV asymmetric per head and token; the ends as Meta's released SpinQuant
    # Llama 3.2 models: embedding int8 per row, lm_head int8 per channel with 8-bit per-token activations
    # (one int8 table when the model ties them, `quant.ends`).
    # GPTQ's calibration forward in bf16, as the official code runs it.
    return QuantConfig(
        w_bits=4, w_group=32, w_method="gptq", a_bits=a_bits, kv_bits=kv_bits, kv_group=0, embed_bits=8,
        lm_head_bits=8, gptq_dtype="bf16",
    )  # fmt: skip


OFFICIAL = Recipe(
    name="official",
    summary="the official SpinQuant code's settings: W4 per-channel GPTQ (clip p=2.4), A asym per token "
    "(o_proj per head), KV asym per head, lm_head fp; learned at W16A4KV4",
    # README: "optimize the rotation with W16A4KV4 ... and apply GPTQ" when weights are GPTQ-quantized.
    learn=dataclasses.replace(_official(4, 4), w_bits=16, w_method="rtn"),
    precisions={"W4A16": _official(16, 16), "W4A8KV8": _official(8, 8), "W4A4KV4": _official(4, 4)},
    # 10_optimize_rotation.sh: 8 GPUs x per_device_train_batch_size 1, model_max_length 2048, max_steps 100,
    # learning_rate 1.5, cosine schedule, bf16; HF Trainer's default max_grad_norm 1.0.
    train=TrainBudget(steps=100, batch_size=8, seq_len=2048, lr=1.5, grad_clip=1.0),
    gptq_samples=128,  # process_args.py: --nsamples 128
    gptq_seq_len=2048,  # eval_utils/main.py: get_wikitext2(seqlen=2048)
)

DEVICE = Recipe(
    name="device",
    summary="what the exported program computes: W4 g32 GPTQ, A8 (or A4) per token, KV8 (or KV4), "
    "8-bit embedding and lm_head; learned at W16A4KV4 with the kernels' activation scheme",
    learn=dataclasses.replace(_device(4, 4), w_bits=16, w_method="rtn", embed_bits=16, lm_head_bits=16),
    precisions={"W4A8KV8": _device(8, 8), "W4A4KV4": _device(4, 4)},
    train=OFFICIAL.train,
    gptq_samples=OFFICIAL.gptq_samples,
    gptq_seq_len=OFFICIAL.gptq_seq_len,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (OFFICIAL, DEVICE)}


def recipe(name: str) -> Recipe:
    """A recipe by name ("official", "device")."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
