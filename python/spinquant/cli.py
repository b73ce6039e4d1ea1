"""Command line: `spinquant optimize|memory|eval|quantize|pipeline|export|run|bench` and `spinquant-export`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .rotation.shipped import rotation_source

if TYPE_CHECKING:
    from .distributed import World

PRESETS = ("FP", "W4A16", "W4A8KV8", "W4A4KV4")
TRAIN_DTYPES = {"cpu": "fp32", "cuda": "bf16"}  # `optimize --train-dtype` by default


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="local Hugging Face folder (Llama, Mistral, Qwen2); default: SmolLM2-135M offline")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed for data sampling and rotations")


def add_quant_args(p: argparse.ArgumentParser, precision: str = "W4A4KV4") -> None:
    from .recipes import RECIPES

    g = p.add_argument_group("quantization")
    g.add_argument("--precision", default=precision, type=str.upper, choices=PRESETS, help="bit-width preset")
    g.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        help="named settings for --precision: 'official' (the official SpinQuant code's) or 'device' (what the "
        "exported program computes); default: the plain presets. Flags below still override.",
    )
    g.add_argument("--w-bits", type=int, help="weight bits (2-8, 16 = off); overrides the preset")
    g.add_argument("--w-group", type=int, help="weight group size along K (0 = per-channel; preset: 32)")
    g.add_argument("--w-asym", action="store_true", help="asymmetric weights (default symmetric)")
    g.add_argument("--no-clip-search", action="store_true", help="plain min/max weight scales, no MSE clip search")
    g.add_argument("--w-method", choices=("rtn", "gptq"), help="weight quantizer (default: the recipe's, else rtn)")
    g.add_argument("--a-bits", type=int, help="activation bits (per token; 16 = off)")
    g.add_argument("--a-clip", type=float, help="activation clip ratio (default 0.9 at 4 bits, else 1.0)")
    g.add_argument("--kv-bits", type=int, help="KV cache bits (16 = off)")
    g.add_argument("--kv-group", type=int, help="KV cache group size along head_dim (0 = head_dim)")
    g.add_argument(
        "--lm-head-bits", type=int, choices=(4, 8, 16), help="lm_head: 4 like the linears, 8 int8 per channel, 16 float"
    )
    g.add_argument("--embed-bits", type=int, choices=(8, 16), help="embedding: 8 int8 per row, 16 float (default)")
    g.add_argument("--gptq-samples", type=int, help="GPTQ calibration samples (default: the recipe's, else 32)")
    g.add_argument("--gptq-seq-len", type=int, help="GPTQ calibration tokens per sample (default 2048)")


def quant_config(a: argparse.Namespace):
    """QuantConfig from a preset and the explicit overrides on the command line."""
    from .quant.config import QuantConfig

    overrides = {
        "w_method": a.w_method,
        "w_bits": a.w_bits,
        "w_group": a.w_group,
        "a_bits": a.a_bits,
        "a_clip": a.a_clip,
        "kv_bits": a.kv_bits,
        "kv_group": a.kv_group,
        "lm_head_bits": a.lm_head_bits,
        "embed_bits": a.embed_bits,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    flags = {"w_sym": not a.w_asym, "w_clip_search": not a.no_clip_search}
    if a.recipe is None:
        return QuantConfig.preset(a.precision, **overrides, **flags)
    # With a recipe, only the flags the user set replace its settings.
    defaults = {"w_sym": True, "w_clip_search": True}
    overrides.update({k: v for k, v in flags.items() if v != defaults[k]})
    return recipe_of(a).config(a.precision, **overrides)


def recipe_of(a: argparse.Namespace):
    from .recipes import recipe

    return recipe(a.recipe)


def gptq_calibration(a: argparse.Namespace, tokenizer):
    """The GPTQ calibration samples the command line asks for (the recipe's sizes by default)."""
    from .data import calibration_samples

    samples = a.gptq_samples or (recipe_of(a).gptq_samples if a.recipe else 32)
    seq_len = a.gptq_seq_len or (recipe_of(a).gptq_seq_len if a.recipe else 2048)
    return calibration_samples(tokenizer, samples, seq_len, seed=a.seed + 1)


def add_rotation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rotation")
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--rotation",
        type=rotation_source,
        help="rotation file from `spinquant optimize`, or a shipped one by name (`spinquant rotations`)",
    )
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
    from .pipeline import prepare
    from .rotation import random_rotations

    cfg = quant_config(a)
    rotation = None
    if a.rotation is not None:
        rotation = load_rotations(a.rotation, base)[:2]
    elif a.random_hadamard is not None:
        rotation = random_rotations(base.args, a.random_hadamard)
    calib = gptq_calibration(a, tokenizer) if cfg.w_method == "gptq" else None
    model = prepare(base, cfg, rotation, a.had, calib)
    return model, cfg, rotation


def learn_config(a: argparse.Namespace):
    """What `optimize` fake-quantizes: the recipe's learning target (flags override), else --precision."""
    import dataclasses

    if a.recipe is None:
        return quant_config(a)
    given = {k: v for k, v in vars(quant_config(a)).items() if k in _explicit_quant_fields(a)}
    return dataclasses.replace(recipe_of(a).learn, **given)


def _explicit_quant_fields(a: argparse.Namespace) -> set[str]:
    """QuantConfig fields the user set on the command line."""
    fields = {"w_bits": a.w_bits, "w_group": a.w_group, "a_bits": a.a_bits, "a_clip": a.a_clip}
    fields.update(kv_bits=a.kv_bits, kv_group=a.kv_group, w_method=a.w_method)
    out = {k for k, v in fields.items() if v is not None}
    out |= {k for k, on in (("w_sym", a.w_asym), ("w_clip_search", a.no_clip_search)) if on}
    return out | {k for k in ("lm_head_bits", "embed_bits") if getattr(a, k) is not None}


def train_budget(a: argparse.Namespace):
    """Steps, batch, sequence length and learning rate: the flags, else the recipe's (full scale), else the
    defaults (100 x 1 x 512, lr 1.5)."""
    from .recipes import TrainBudget

    base = recipe_of(a).train if a.recipe else TrainBudget(steps=100, batch_size=1, seq_len=512, lr=1.5, grad_clip=None)
    given = {"steps": a.steps, "batch_size": a.batch_size, "seq_len": a.seq_len, "lr": a.lr}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


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
    cfg = learn_config(a)
    budget = train_budget(a)
    a.steps, a.batch_size, a.seq_len, a.lr = budget.steps, budget.batch_size, budget.seq_len, budget.lr
    if a.grad_clip is None:
        a.grad_clip = budget.grad_clip
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
        keep_states=a.keep_states,
    )
    if not world.is_main:
        return
    info = {
        "command": " ".join(["spinquant", *a.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": source_commit(),
        "recipe": a.recipe,
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
        "losses": history,
    }
    save_rotations(a.out, base, R1, R2, info)
    print(f"wrote {a.out} (loss {history[0]:.4f} -> {history[-1]:.4f})")


def source_commit(source: Path = Path(__file__)) -> str | None:
    """The git commit of the checkout `source` (this file) is tracked in ("-dirty" when it has changes), or None
    when it is an installed copy (a wheel, or a virtual environment inside a checkout: that copy's commit is
    unknown)."""
    git = ["git", "-C", str(source.parent)]
    try:
        tracked = subprocess.run([*git, "ls-files", "--error-unmatch", source.name], capture_output=True)
        if tracked.returncode != 0:
            return None
        out = subprocess.run([*git, "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


def cmd_rotations(a: argparse.Namespace) -> None:
    """Print each shipped rotation: its name, model, recipe, budget, held-out loss and provenance."""
    from .checkpoint import read_rotations
    from .rotation.shipped import shipped_names, shipped_path

    for name in shipped_names():
        _, _, meta = read_rotations(shipped_path(name))
        model, info = json.loads(meta["model"]), json.loads(meta["info"])
        budget = f"{info['steps']} x {info['batch_size']} x {info['seq_len']} tokens"
        held = info.get("heldout_loss")
        held = f", held-out loss {held['start']:.4f} -> {held['learned']:.4f}" if held else ""
        print(f"{name}: {model.get('name')}, recipe {info['recipe']}, {'had' if info['had'] else 'no_had'}, {budget}")
        print(f"  {info.get('command')} (commit {info.get('commit')}, {info.get('date')}){held}")


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
    from .eval.perplexity import Perplexity, window_nlls
    from .model import load_model

    own_text = user_text(a)  # read and checked before the model loads
    tasks = [t for t in a.tasks.split(",") if t]
    if a.zeroshot_limit >= 0:  # unknown tasks or missing data fail here, before the model loads
        from .eval.harness import load_tasks, zeroshot

        load_tasks(tasks)
    if a.checkpoint is not None:
        model, cfg, _, _ = load_quantized(a.checkpoint)
        from transformers import AutoTokenizer

        from . import assets

        tokenizer = AutoTokenizer.from_pretrained(str(Path(a.model) if a.model else assets.default_model_dir()))
    else:
        base, tokenizer = load_model(a.model)
        model, cfg, _ = quantized_model(a, base, tokenizer)
    result = {"config": str(cfg), "perplexity": {}}
    for name, windows in eval_windows(a, tokenizer, own_text).items():
        ppl = Perplexity.of(window_nlls(model, windows, progress=True))
        lo, hi = ppl.ci()
        n, t = windows.shape
        result["perplexity"][name] = {"ppl": ppl.value, "ci95": [lo, hi], "windows": n, "tokens": n * t}
    if a.zeroshot_limit >= 0:
        dtype = torch.bfloat16 if a.zeroshot_dtype == "bf16" else torch.float32
        limit = a.zeroshot_limit or None
        result["zeroshot"] = zeroshot(model, tokenizer, tasks, limit=limit, seed=a.seed, dtype=dtype)
    print(json.dumps(result, indent=2))


def user_text(a: argparse.Namespace) -> str | None:
    """The text of --text FILE or --dataset PATH (--text-field), read and checked up front; else None."""
    from .data import read_dataset_text, read_text_file

    if a.text is not None:
        return read_text_file(a.text)
    if a.dataset is not None:
        return read_dataset_text(a.dataset, a.text_field)
    return None


def eval_windows(a: argparse.Namespace, tokenizer, own_text: str | None) -> dict:
    """Perplexity windows by name: the user's text, else each held-out domain of --domains."""
    from .data import HELDOUT_DOMAINS, heldout_windows, text_windows

    n = a.ppl_windows or None
    if own_text is not None:
        name = "text" if a.text is not None else "dataset"
        what = f"--{name} {a.text if a.text is not None else a.dataset}"
        return {name: text_windows(tokenizer, own_text, a.ppl_seq_len, n, what)}
    domains = [d for d in a.domains.split(",") if d]
    unknown = sorted(set(domains) - set(HELDOUT_DOMAINS))
    if unknown or not domains:
        raise ValueError(f"--domains {a.domains!r}: choose from {', '.join(HELDOUT_DOMAINS)}")
    return {d: heldout_windows(tokenizer, d, a.ppl_seq_len, n) for d in domains}


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
    for key in ("precisions", "device_precisions", "gptq", "rtn", "device_methods", "zeroshot_tasks", "bench_variants"):
        if key in given:
            given[key] = tuple(x for x in given[key].split(",") if x)
    run(Settings.full(**given) if a.full else Settings(**given))


def build_parser() -> argparse.ArgumentParser:
    from .eval.harness import DEFAULT_TASKS

    parser = argparse.ArgumentParser(prog="spinquant", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also SPINQUANT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("optimize", help="learn R1/R2 with Cayley SGD against the quantized model's loss")
    add_model_args(p)
    add_quant_args(p)
    p.add_argument("--had", action=argparse.BooleanOptionalAction, default=True, help="learn with R3/R4 online")
    p.add_argument("--steps", type=int, help="Cayley SGD steps (default: the recipe's, else 100; paper: 100)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: the recipe's, else 1; paper: 8)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the recipe's, else 512; paper: 2048)")
    p.add_argument("--lr", type=float, help="learning rate (default 1.5 as the paper, cosine schedule)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="resume an interrupted run")
    p.add_argument("--checkpoint-every", type=int, default=10, help="save the resumable state every N steps")
    p.add_argument(
        "--keep-states", action="store_true", help="keep every saved state as <resume file>.<step> (loss curves)"
    )
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

    p = sub.add_parser("rotations", help="list the rotations shipped with the package (use them as --rotation NAME)")
    p.set_defaults(func=cmd_rotations)

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
    p.add_argument("--ppl-windows", type=int, default=8, help="windows per text, spread over it (0 = all of it)")
    p.add_argument("--ppl-seq-len", type=int, default=2048, help="tokens per perplexity window (paper: 2048)")
    p.add_argument("--domains", default="wiki,c4", help="held-out texts: wiki (wiki.utf8's test part), c4")
    own = p.add_mutually_exclusive_group()
    own.add_argument("--text", type=Path, help="score your own plain UTF-8 text file instead")
    own.add_argument("--dataset", type=Path, help="score a local dataset (.arrow, .parquet, .jsonl or a folder)")
    p.add_argument("--text-field", default="text", help="the --dataset column holding the text")
    p.add_argument(
        "--zeroshot-limit", type=int, default=-1, help="zero-shot: first N documents of each task (0 = all, -1 = skip)"
    )
    p.add_argument(
        "--tasks",
        default=",".join(DEFAULT_TASKS),
        help="comma-separated lm-eval tasks, groups or tags (any whose data is available offline)",
    )
    p.add_argument(
        "--zeroshot-dtype", choices=("fp32", "bf16"), default="fp32", help="zero-shot forward precision (bf16: faster)"
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quantize", help="rotate, quantize and write an int4-packed checkpoint")
    add_model_args(p)
    add_quant_args(p)
    add_rotation_args(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file (.safetensors) to write")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("pipeline", help="the main job: optimize, evaluate, export, benchmark, print the tables")
    p.add_argument("--model", help="local Hugging Face folder; default: SmolLM2-135M offline")
    p.add_argument("--full", action="store_true", help="paper scale: the recipe's budgets, every window and document")
    p.add_argument("--out-dir", type=Path, help="where rotations, checkpoints and results go (runs/default)")
    p.add_argument("--recipe", help="settings of the headline rows: official (default) or device")
    p.add_argument("--steps", type=int, help="rotation learning steps (default 24; --full the recipe's 100)")
    p.add_argument("--train-batch", type=int, help="sequences per learning step (default 1; --full 8)")
    p.add_argument("--train-seq-len", type=int, help="tokens per learning sequence (default 512; --full 2048)")
    p.add_argument("--ppl-windows", type=int, help="2048-token windows per held-out text (default 8; 0 = all)")
    p.add_argument("--ppl-seq-len", type=int, help="tokens per perplexity window (default 2048)")
    p.add_argument("--eval-dtype", help="fp32 (default) or bf16 matmuls in the evaluation")
    p.add_argument("--zeroshot-limit", type=int, help="zero-shot documents per task (default 60; 0 = all; -1 = skip)")
    p.add_argument("--quarot-seeds", type=int, help="random Hadamard seeds (default 3; --full 5)")
    p.add_argument("--precisions", help="comma-separated precisions of the recipe (default W4A4KV4; --full all)")
    p.add_argument(
        "--device-precisions", help="comma-separated precisions of the device rows (default W4A8KV8; --full all)"
    )
    methods = "none, quarot, no_had, had (learned by the job), shipped, shipped_no_had (`spinquant rotations`)"
    p.add_argument("--gptq", help=f"methods quantized with GPTQ, of {methods} (default quarot,had,shipped)")
    p.add_argument("--rtn", help=f"methods quantized with RTN, of {methods} (default none; --full all)")
    p.add_argument("--device-methods", help=f"the device rows' methods, of {methods} (default had; --full all)")
    p.add_argument("--gptq-samples", type=int, help="GPTQ calibration samples (default 32; --full 128)")
    p.add_argument("--gptq-seq-len", type=int, help="GPTQ calibration tokens per sample (default 2048)")
    p.add_argument("--zeroshot-tasks", help="comma-separated lm-eval tasks (default: the eight of the paper)")
    p.add_argument(
        "--bench-variants",
        help="decode benchmark variants, '' to skip (default fp32_eager,w4a8_no_had,w4a8_had,w4a4kv4_had; "
        "--full all, with ExecuTorch's XNNPACK 8da4w path)",
    )
    p.add_argument("--bench-runs", type=int, help="decode benchmark runs a setting (default 2; --full 5)")
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
    for p in sub.choices.values():  # `spinquant CMD ... --debug` too
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def export_main(argv: list[str] | None = None) -> None:
    """`spinquant-export ...`: the same as `spinquant export ...`."""
    main(["export", *(sys.argv[1:] if argv is None else argv)])


# What Ctrl-C leaves behind and how to go on, by command.
RESUME_HINTS = {
    "optimize": "the state saved every --checkpoint-every steps is kept: rerun the same command to resume",
    "pipeline": "finished artifacts in --out-dir are kept: rerun the same command to reuse them",
}


def one_line(err: BaseException) -> str:
    """An exception as one line: its message with newlines folded, after its type unless it is one of ours or a
    ValueError / OSError (whose messages say what is wrong)."""
    text = " ".join(str(err).split())
    ours = isinstance(err, ValueError | OSError) or type(err).__module__.startswith("spinquant")
    return text if ours and text else f"{type(err).__name__}: {text}".rstrip(": ")


def main(argv: list[str] | None = None) -> None:
    """Run one command; every failure is one line `spinquant <cmd>: error: ...` and exit status 2 (1 for a
    distributed failure, 130 for Ctrl-C), with the traceback only under --debug or SPINQUANT_DEBUG=1."""
    from .distributed import DistributedError
    from .validate import check_command

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    debug = args.debug or os.environ.get("SPINQUANT_DEBUG", "") not in ("", "0")
    try:
        check_command(args)
        if getattr(args, "threads", 0):
            torch.set_num_threads(args.threads)
        args.func(args)
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(args.command, "nothing was written: rerun the command")
        print(f"\nspinquant {args.command}: interrupted; {hint}", file=sys.stderr)
        sys.exit(130)
    except DistributedError as err:
        print(f"spinquant {args.command}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:
        if debug:
            raise
        print(f"spinquant {args.command}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
