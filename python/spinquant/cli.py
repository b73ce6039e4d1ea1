"""Command line: `spinquant optimize|memory|eval|quantize|pipeline|export|run|bench` and `spinquant-export`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .distributed import World

PRESETS = ("FP", "W4A16", "W4A8KV8", "W4A4KV4")
TRAIN_DTYPES = {"cpu": "fp32", "cuda": "bf16"}  # `optimize --train-dtype` by default


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="local Hugging Face folder (Llama, Mistral, Qwen2); default: SmolLM2-135M offline")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed for data sampling and rotations")


def add_quant_args(p: argparse.ArgumentParser, precision: str = "W4A4KV4") -> None:
    g = p.add_argument_group("quantization")
    g.add_argument("--precision", default=precision, type=str.upper, choices=PRESETS, help="bit-width preset")
    g.add_argument("--w-bits", type=int, help="weight bits (2-8, 16 = off); overrides the preset")
    g.add_argument("--w-group", type=int, help="weight group size along K (0 = per-channel; preset: 32)")
    g.add_argument("--w-asym", action="store_true", help="asymmetric weights (default symmetric)")
    g.add_argument("--no-clip-search", action="store_true", help="plain min/max weight scales, no MSE clip search")
    g.add_argument("--w-method", choices=("rtn", "gptq"), default="rtn", help="weight quantizer")
    g.add_argument("--a-bits", type=int, help="activation bits (per token; 16 = off)")
    g.add_argument("--a-clip", type=float, help="activation clip ratio (default 0.9 at 4 bits, else 1.0)")
    g.add_argument("--kv-bits", type=int, help="KV cache bits (16 = off)")
    g.add_argument("--kv-group", type=int, help="KV cache group size along head_dim (0 = head_dim)")
    g.add_argument("--quantize-lm-head", action="store_true", help="also quantize lm_head (off, as in the paper)")
    g.add_argument("--gptq-samples", type=int, default=32, help="GPTQ calibration samples")
    g.add_argument("--gptq-seq-len", type=int, default=512, help="GPTQ calibration sequence length")


def quant_config(a: argparse.Namespace):
    """QuantConfig from a preset and the explicit overrides on the command line."""
    from .quant.config import QuantConfig

    overrides = {
        "w_bits": a.w_bits,
        "w_group": a.w_group,
        "a_bits": a.a_bits,
        "a_clip": a.a_clip,
        "kv_bits": a.kv_bits,
        "kv_group": a.kv_group,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.update(w_method=a.w_method, w_sym=not a.w_asym, w_clip_search=not a.no_clip_search)
    overrides["quantize_lm_head"] = a.quantize_lm_head
    return QuantConfig.preset(a.precision, **overrides)


def add_rotation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rotation")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--rotation", type=Path, help="rotation file from `spinquant optimize`")
    src.add_argument("--random-hadamard", type=int, metavar="SEED", help="random Hadamard R1/R2 (QuaRot-style)")
    g.add_argument(
        "--had",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="online Hadamards R3 (q/k) and R4 (down_proj input); --no-had skips them",
    )


def quantized_model(a: argparse.Namespace, base, tokenizer):
    """Fuse, rotate and quantize `base` as the command line says; returns (model, cfg, R1, R2)."""
    from .checkpoint import load_rotations
    from .data import calibration_samples
    from .pipeline import prepare
    from .rotation import random_rotations

    cfg = quant_config(a)
    rotation = None
    if a.rotation is not None:
        rotation = load_rotations(a.rotation, base)[:2]
    elif a.random_hadamard is not None:
        rotation = random_rotations(base.args, a.random_hadamard)
    calib = None
    if cfg.w_method == "gptq":
        calib = calibration_samples(tokenizer, a.gptq_samples, a.gptq_seq_len, seed=a.seed + 1)
    model = prepare(base, cfg, rotation, a.had, calib)
    return model, cfg, rotation


def cmd_optimize(a: argparse.Namespace) -> None:
    from .distributed import process_group

    with process_group(a.dist_timeout, a.device) as world:
        optimize(a, world)


def optimize(a: argparse.Namespace, world: World) -> None:
    """`spinquant optimize` on one rank of `world` (rank 0 of 1 without torchrun); rank 0 writes the file."""
    from .checkpoint import save_rotations
    from .data import calibration_samples
    from .model import load_model
    from .rotation import fuse_norms, set_online_hadamards
    from .train import learn_rotations

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.train_dtype or TRAIN_DTYPES[a.device]]
    base, tokenizer = load_model(a.model, sharded=a.fsdp)
    cfg = quant_config(a)
    calib = calibration_samples(tokenizer, a.steps * a.batch_size, a.seq_len, seed=a.seed)
    model = fuse_norms(base)
    set_online_hadamards(model, a.had)
    resume = a.out.with_name(f".{a.out.name}.resume")
    R1, R2, history = learn_rotations(
        model,
        cfg,
        calib,
        steps=a.steps,
        lr=a.lr,
        batch_size=a.batch_size,
        seed=a.seed,
        had=a.had,
        checkpoint_path=resume,
        checkpoint_every=a.checkpoint_every,
        resume=a.resume,
        progress=True,
        fsdp=a.fsdp,
        micro_batch=a.micro_batch,
        compute_dtype=dtype,
        device=a.device,
        grad_clip=a.grad_clip,
    )
    if not world.is_main:
        return
    info = {
        "steps": a.steps,
        "seq_len": a.seq_len,
        "lr": a.lr,
        "seed": a.seed,
        "had": a.had,
        "batch_size": a.batch_size,
        "train_dtype": str(dtype).removeprefix("torch."),
        "grad_clip": a.grad_clip,
        "config": cfg.to_dict(),
        "loss_first": history[0],
        "loss_last": history[-1],
    }
    save_rotations(a.out, base, R1, R2, info)
    print(f"wrote {a.out} (loss {history[0]:.4f} -> {history[-1]:.4f})")


def cmd_memory(a: argparse.Namespace) -> None:
    from . import assets
    from .memory import PUBLIC_SHAPES, memory_table, public_shapes
    from .model import read_args

    shapes = {}
    for name in a.models.split(","):
        if name in PUBLIC_SHAPES:
            shapes[name] = public_shapes()[name]
        else:
            folder = assets.default_model_dir() if name == "default" else Path(name)
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{name!r} is neither a shape of {', '.join(PUBLIC_SHAPES)} nor a model folder")
            shapes[folder.name] = read_args(folder)
    ranks = tuple(int(n) for n in a.ranks.split(","))
    print(f"Estimated peak GiB per rank of `spinquant optimize`, global batch {a.batch_size} x {a.seq_len} tokens:\n")
    print(memory_table(shapes, ranks, a.batch_size, a.seq_len))


def cmd_eval(a: argparse.Namespace) -> None:
    from .checkpoint import load_quantized
    from .data import test_windows
    from .eval.perplexity import perplexity
    from .eval.zeroshot import zeroshot
    from .model import load_model

    if a.checkpoint is not None:
        model, cfg, _, _ = load_quantized(a.checkpoint)
        from transformers import AutoTokenizer

        from . import assets

        tokenizer = AutoTokenizer.from_pretrained(str(Path(a.model) if a.model else assets.default_model_dir()))
    else:
        base, tokenizer = load_model(a.model)
        model, cfg, _ = quantized_model(a, base, tokenizer)
    windows = test_windows(tokenizer, a.ppl_seq_len, a.ppl_windows or None)
    result = {"config": str(cfg), "perplexity": perplexity(model, windows)}
    if a.zeroshot_limit >= 0:
        result["zeroshot"] = zeroshot(model, tokenizer, a.tasks.split(","), limit=a.zeroshot_limit or None, seed=a.seed)
    print(json.dumps(result, indent=2))


def cmd_quantize(a: argparse.Namespace) -> None:
    from .checkpoint import save_quantized
    from .model import load_model

    base, tokenizer = load_model(a.model)
    model, cfg, rotation = quantized_model(a, base, tokenizer)
    R1, R2 = rotation if rotation is not None else (None, None)
    save_quantized(a.out, model, cfg, a.had, R1, R2)
    print(f"wrote {a.out} ({cfg})")


def cmd_pipeline(a: argparse.Namespace) -> None:
    from .pipeline import Settings, run

    fields = {f.name for f in dataclasses.fields(Settings)}
    given = {k: v for k, v in vars(a).items() if k in fields and v is not None}
    for key in ("precisions", "w_methods", "zeroshot_tasks", "bench_variants"):
        if key in given:
            given[key] = tuple(x for x in given[key].split(",") if x)
    run(Settings.full(**given) if a.full else Settings(**given))


def build_parser() -> argparse.ArgumentParser:
    from .eval.zeroshot import DEFAULT_TASKS

    parser = argparse.ArgumentParser(prog="spinquant", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("optimize", help="learn R1/R2 with Cayley SGD against the quantized model's loss")
    add_model_args(p)
    add_quant_args(p)
    p.add_argument("--had", action=argparse.BooleanOptionalAction, default=True, help="learn with R3/R4 online")
    p.add_argument("--steps", type=int, default=100, help="Cayley SGD steps (paper: 100)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (paper: 2048)")
    p.add_argument("--lr", type=float, default=1.5, help="learning rate (paper: 1.5, cosine schedule)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="resume an interrupted run")
    p.add_argument("--checkpoint-every", type=int, default=10, help="save the resumable state every N steps")
    g = p.add_argument_group("speed (results: benchmarks/results/learning-speed.md)")
    g.add_argument("--micro-batch", type=int, default=1, help="sequences per forward/backward (gradients accumulate)")
    g.add_argument(
        "--train-dtype",
        choices=("fp32", "bf16"),
        help="matmul precision of the learning loss (default: fp32 on cpu, bf16 on cuda; bf16 is ~3x faster "
        "on CPUs with AVX512_BF16)",
    )
    g.add_argument("--grad-clip", type=float, help="clip the global gradient norm of R1 and all R2 (official: 1.0)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to learn (cuda: NCCL, torchrun)")
    p.add_argument("--out", type=Path, default=Path("rotations.safetensors"), help="rotation file to write")
    g = p.add_argument_group("distributed (under torchrun: README, 'Several processes or machines')")
    g.add_argument("--fsdp", action="store_true", help="shard the frozen weights over the ranks (FSDP2)")
    g.add_argument(
        "--dist-timeout", type=float, default=600.0, help="seconds a collective waits for a silent rank before failing"
    )
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("memory", help="estimated peak memory per rank of `optimize`, data parallel and --fsdp")
    p.add_argument(
        "--models",
        default="Llama-3.2-1B,Llama-3-8B,Llama-3-70B",
        help="comma-separated public shapes (Llama-3.2-1B, Llama-3-8B, Llama-3-70B), local HF folders or 'default'",
    )
    p.add_argument("--ranks", default="1,2,8", help="comma-separated numbers of ranks")
    p.add_argument("--batch-size", type=int, default=8, help="global batch (sequences per step)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a quantized (rotated) model")
    add_model_args(p)
    add_quant_args(p)
    add_rotation_args(p)
    p.add_argument("--checkpoint", type=Path, help="evaluate a checkpoint from `spinquant quantize` instead")
    p.add_argument("--ppl-windows", type=int, default=16, help="held-out windows (0 = the whole test split)")
    p.add_argument("--ppl-seq-len", type=int, default=512, help="tokens per perplexity window")
    p.add_argument("--zeroshot-limit", type=int, default=-1, help="examples per task (0 = all, -1 = skip)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated zero-shot tasks")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quantize", help="rotate, quantize and write an int4-packed checkpoint")
    add_model_args(p)
    add_quant_args(p)
    add_rotation_args(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file (.safetensors) to write")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("pipeline", help="the main job: optimize, evaluate, export, benchmark, print the table")
    p.add_argument("--model", help="local Hugging Face folder; default: SmolLM2-135M offline")
    p.add_argument("--full", action="store_true", help="paper-like sizes (hours on 2 cores)")
    p.add_argument("--out-dir", type=Path, help="where rotations, checkpoints and results go (runs/default)")
    p.add_argument("--steps", type=int, help="rotation learning steps (default 24; --full 100)")
    p.add_argument("--train-seq-len", type=int, help="tokens per training step (default 512; --full 2048)")
    p.add_argument("--ppl-windows", type=int, help="perplexity windows (default 8; 0 = whole test split)")
    p.add_argument("--ppl-seq-len", type=int, help="tokens per perplexity window (default 512)")
    p.add_argument("--zeroshot-limit", type=int, help="zero-shot examples per task (default 10; 0 = all; -1 = skip)")
    p.add_argument("--quarot-seeds", type=int, help="random Hadamard seeds (default 3; --full 5)")
    p.add_argument("--precisions", help="comma-separated presets (default W4A4KV4; --full all three)")
    p.add_argument("--w-methods", help="comma-separated weight quantizers (default rtn,gptq)")
    p.add_argument("--gptq-samples", type=int, help="GPTQ calibration samples (default 8; --full 128)")
    p.add_argument("--gptq-seq-len", type=int, help="GPTQ calibration tokens per sample (default 512)")
    p.add_argument("--zeroshot-tasks", help="comma-separated zero-shot tasks (default: all eight)")
    p.add_argument(
        "--bench-variants",
        help="decode benchmark variants, '' to skip (default fp32_eager,xnnpack_8da4w,w4a8_no_had,"
        "w4a8_had,w4a4kv4_had; --full adds xnnpack_8da4w_fused)",
    )
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.set_defaults(func=cmd_pipeline)

    from .export import cli as export_cli

    p = sub.add_parser("export", help="write an ExecuTorch .pte with our kernels as custom ops (= spinquant-export)")
    export_cli.export_add_arguments(p)
    p.set_defaults(func=export_cli.export_main)
    p = sub.add_parser("run", help="generate text from a .pte through the ExecuTorch runtime")
    export_cli.run_add_arguments(p)
    p.set_defaults(func=export_cli.run_main)
    p = sub.add_parser("bench", help="decode ms/token: fp32 eager, XNNPACK 8da4w and ours, side by side")
    export_cli.bench_add_arguments(p)
    p.set_defaults(func=export_cli.bench_main)
    return parser


def export_main(argv: list[str] | None = None) -> None:
    """`spinquant-export ...`: the same as `spinquant export ...`."""
    main(["export", *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> None:
    from .assets import MissingAssetError
    from .distributed import DistributedError

    args = build_parser().parse_args(argv)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, MissingAssetError) as err:
        print(f"spinquant {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except DistributedError as err:
        print(f"spinquant {args.command}: error: {err}", file=sys.stderr)
        sys.exit(1)
