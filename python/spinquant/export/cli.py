"""Command-line entry points of the export package, as `add_arguments(parser)` + `main(args)` pairs:
`spinquant-export` (export_*), `spinquant run` (run_*), `spinquant bench` (bench_*)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODES = ("W4A8", "W4A4KV4")


def mode_config(mode: str, lm_head_bits: int = 4, embed_bits: int = 16):
    """QuantConfig of an export mode: W4A8 (float KV cache) or W4A4KV4; weights 4-bit g32 symmetric RTN;
    lm_head at 4 (like the linears), 8 (int8, 8-bit activations) or 16 bits; the embedding at 8 or 16."""
    from spinquant.quant.config import QuantConfig

    mode = mode.upper()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    a_bits, kv_bits = (8, 16) if mode == "W4A8" else (4, 4)
    return QuantConfig(
        w_bits=4, w_group=32, a_bits=a_bits, kv_bits=kv_bits, lm_head_bits=lm_head_bits, embed_bits=embed_bits
    )


def prepare_model(model, cfg, had: bool, rotation: str | None = None, seed: int = 0):
    """Fuse norms, merge R1/R2 (a rotation file, else seeded random Hadamards) and R4, quantize with RTN."""
    from spinquant.checkpoint import load_rotations
    from spinquant.quant import quantize_model
    from spinquant.rotation import apply_rotations, fuse_norms, random_rotations

    fuse_norms(model)
    R1, R2 = load_rotations(rotation, model)[:2] if rotation else random_rotations(model.args, seed)
    apply_rotations(model, R1, R2, had)
    return quantize_model(model, cfg, progress=False)


# ---- spinquant-export ----------------------------------------------------------------------------------


def export_add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="output .pte path")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="quantized checkpoint written by `spinquant quantize` (safetensors)")
    src.add_argument("--model", help="HF model folder to rotate and quantize here (default: SmolLM2-135M offline)")
    p.add_argument(
        "--rotation",
        help="with --model: rotation file (R1/R2) from `spinquant optimize`; default: seeded random Hadamard rotations",
    )
    p.add_argument("--mode", default="W4A8", type=str.upper, choices=MODES, help="with --model: bit widths")
    p.add_argument(
        "--lm-head-bits",
        type=int,
        choices=(4, 8, 16),
        default=4,
        help="with --model: lm_head int4 like the linears (default), int8 per channel with 8-bit activations, or fp32",
    )
    p.add_argument(
        "--embed-bits",
        type=int,
        choices=(8, 16),
        default=16,
        help="with --model: embedding int8 per row or fp32 (default); 8 with --lm-head-bits 8 shares one table "
        "when the model ties them",
    )
    p.add_argument(
        "--had",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="online Hadamards R3/R4 (with --model default on; with --checkpoint it must match the file)",
    )
    p.add_argument(
        "--target",
        choices=("arm64", "x86_64", "macos-arm64"),
        help="kernel set recorded in the program (default: host); macos-arm64 records arm64 and bundles for macOS",
    )
    p.add_argument(
        "--bundle",
        help="also write a folder (or DIR.tar.gz) to copy to the device: program, runner, libraries, run.sh "
        "(docs/DEVICES.md)",
    )
    p.add_argument("--runner-dir", help="with --bundle: the device build folder (default build/device-PLATFORM)")
    p.add_argument(
        "--tokenizer",
        help="HF tokenizer folder packed into the program for the C++ runner's --prompt (default: the model's own; "
        "with --checkpoint none unless given)",
    )
    p.add_argument("--max-seq-len", type=int, default=512, help="KV cache length (prompt + generated tokens)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random rotations")


def export_main(a: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from spinquant.export.bundle import BundleError, find_build_for_target, write_bundle
    from spinquant.export.exporter import export_model
    from spinquant.model import load_model

    try:  # before the long work
        device = find_build_for_target(a.target, a.runner_dir) if a.bundle else None
    except BundleError as e:
        sys.exit(f"spinquant-export: {e}")
    tokenizer = None
    if a.checkpoint:
        from spinquant.checkpoint import load_quantized

        model, cfg, had, _ = load_quantized(a.checkpoint)  # --had was checked against it (spinquant.validate)
    else:
        model, tokenizer = load_model(a.model)
        cfg = mode_config(a.mode, a.lm_head_bits, a.embed_bits)
        had = True if a.had is None else a.had
        prepare_model(model, cfg, had, a.rotation, a.seed)
    if a.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    target = "arm64" if a.target == "macos-arm64" else a.target
    res = export_model(
        model, a.output, target=target, had=had, quant=cfg.to_dict(), tokenizer=tokenizer, max_seq_len=a.max_seq_len
    )
    packed = "with its tokenizer" if res.metadata["tokenizer"].get("packed") else "no tokenizer: runner needs --tokens"
    print(
        f"wrote {res.path} ({res.bytes / 1e6:.1f} MB, {cfg.name}, had={had}, target={res.metadata['target']}, "
        f"{packed}) in {res.seconds:.0f} s"
    )
    if device:
        print(f"wrote {write_bundle(device, res.path, a.bundle)} (run it on the {device.platform} device: sh run.sh)")
    return 0


# ---- spinquant run -------------------------------------------------------------------------------------


def run_add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pte", help="program written by spinquant-export")
    p.add_argument("--prompt", required=True, help="text prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="kernel threads (0 = all cores)")
    p.add_argument("--tokenizer", help="HF tokenizer folder (default: the program's own, else the folder it names)")


def _tokenizer(model, folder: str | None):
    """`--tokenizer` if given, else the one the program carries, else the folder its metadata names."""
    from transformers import AutoTokenizer

    if folder is None and (native := model.tokenizer()) is not None:
        return native
    folder = folder or model.metadata.get("tokenizer", {}).get("name")
    if not folder or not Path(folder).is_dir():
        raise ValueError(f"{model.path} carries no tokenizer and names no folder here; pass --tokenizer")
    return AutoTokenizer.from_pretrained(folder)


def run_main(a: argparse.Namespace) -> int:
    from spinquant.export.runtime import PteModel, set_threads

    model = PteModel(a.pte)
    set_threads(a.threads)
    tok = _tokenizer(model, a.tokenizer)
    prepack_s = model.prepack()
    text = model.generate(tok, a.prompt, a.max_new_tokens, a.temperature, a.top_p, a.seed)
    print(a.prompt + text)
    t = model.timing
    print(
        f"[weights prepacked in {prepack_s:.2f} s; prefill {t.prefill_tokens} tokens at {t.prefill_tok_per_s:.1f} "
        f"tok/s; decode {t.decode_tokens} tokens at {t.decode_ms_per_token:.2f} ms/token]",
        file=sys.stderr,
    )
    return 0


# ---- spinquant bench -----------------------------------------------------------------------------------


def bench_add_arguments(p: argparse.ArgumentParser) -> None:
    from spinquant.export.bench import VARIANTS

    p.add_argument("--model", help="HF model folder (default: SmolLM2-135M offline)")
    p.add_argument("--out", default="benchmarks/results", help="folder for the .pte files, table and chart")
    p.add_argument("--name", default="decode", help="file stem of the table (.md), data (.json) and chart (.png)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    # Not `threads`: `spinquant` sizes torch's pool from an int --threads before running any command.
    p.add_argument("--threads", dest="bench_threads", default="1,2", help="comma list of thread counts")
    p.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (beyond 42, the prompt is wiki test text)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=5, help="runs per setting (the median is reported)")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppl-tokens", type=int, default=256, help="wiki test tokens for the eager vs .pte perplexity")
    p.add_argument(
        "--llama-cpp",
        action="store_true",
        help="also time llama.cpp's llama-bench on the Q4_0 GGUF in every round (build it once with "
        "`bash benchmarks/llama_cpp.sh`; SPINQUANT_LLAMA_CPP names its folder)",
    )
    p.add_argument("--memory", action="store_true", help="also report each program's file size and peak RSS decoding")


def bench_main(a: argparse.Namespace) -> int:
    from spinquant.export.bench import run_bench
    from spinquant.export.llama_cpp import LlamaCppMissing

    try:
        run_bench(
            model_path=a.model,
            out=Path(a.out),
            variants=[v.strip() for v in a.variants.split(",") if v.strip()],
            threads=[int(t) for t in a.bench_threads.split(",")],
            prompt_len=a.prompt_len,
            new_tokens=a.new_tokens,
            runs=a.runs,
            max_seq_len=a.max_seq_len,
            seed=a.seed,
            ppl_tokens=a.ppl_tokens,
            name=a.name,
            llama_cpp=a.llama_cpp,
            memory=a.memory,
        )
    except LlamaCppMissing as e:
        sys.exit(f"spinquant bench: {e}")
    return 0
