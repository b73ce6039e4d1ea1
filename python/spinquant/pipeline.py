"""The main job: learn rotations, quantize with every method, evaluate, and print one table.

Methods (rows): fp32; RTN (no rotation); QuaRot-style random Hadamard R1/R2 with R3/R4 (mean and spread over
seeds); SpinQuant learned R1/R2 without online Hadamards (no_had) and with them (had). Each at the chosen
precisions (W4A16, W4A8KV8, W4A4KV4) and weight quantizers (RTN, GPTQ). The rotations are learned once per
variant at `learn_precision` (W4A4KV4 by default, weights RTN with clip search in the loss) and reused at
the other precisions and for GPTQ.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .checkpoint import IncompatibleFileError, load_rotations, save_quantized, save_rotations
from .data import calibration_samples, test_windows
from .eval.harness import DEFAULT_TASKS, zeroshot
from .eval.perplexity import perplexity
from .export.bench import VARIANTS, run_bench, start_xnnpack_exports
from .model import Transformer, load_model
from .plots import channel_maxima, plot_outliers
from .quant.apply import quantize_model
from .quant.config import QuantConfig
from .rotation import apply_rotations, fuse_norms, random_rotations, set_online_hadamards
from .train import LOSS_VERSION, held_out_loss, learn_rotations

console = Console()


@dataclass
class Settings:
    """Sizes of the main job. The defaults fit ~20 minutes on 2 cores; `full()` is the paper-like run."""

    model: str | None = None
    out_dir: Path = Path("runs/default")
    precisions: tuple[str, ...] = ("W4A4KV4",)
    w_methods: tuple[str, ...] = ("rtn", "gptq")
    learn_precision: str = "W4A4KV4"
    steps: int = 24
    train_seq_len: int = 512
    lr: float = 1.5
    gptq_samples: int = 8
    gptq_seq_len: int = 512
    ppl_windows: int = 8
    ppl_seq_len: int = 512
    quarot_seeds: int = 3
    zeroshot_limit: int = 10
    zeroshot_tasks: tuple[str, ...] = DEFAULT_TASKS
    seed: int = 0
    export: bool = True
    bench_variants: tuple[str, ...] = ("fp32_eager", "xnnpack_8da4w", "w4a8_no_had", "w4a8_had", "w4a4kv4_had")

    @classmethod
    def full(cls, **overrides) -> Settings:
        """Paper-like sizes: 100 steps x 2048 tokens, 128 GPTQ samples, whole test split, full zero-shot sets,
        5 QuaRot seeds, every benchmark variant."""
        base = dict(
            precisions=("W4A16", "W4A8KV8", "W4A4KV4"),
            steps=100,
            train_seq_len=2048,
            gptq_samples=128,
            gptq_seq_len=2048,
            ppl_windows=0,
            ppl_seq_len=2048,
            zeroshot_limit=0,
            quarot_seeds=5,
            bench_variants=VARIANTS,
        )
        return cls(**{**base, **overrides})


@dataclass
class Row:
    """One evaluated configuration."""

    method: str
    precision: str
    w_method: str
    ppl: list[float] = field(default_factory=list)
    zeroshot: list[float] = field(default_factory=list)
    seconds: float = 0.0  # quantizing and evaluating every model of the row

    def cell(self, values: list[float], fmt: str) -> str:
        if not values:
            return "-"
        if len(values) == 1:
            return format(values[0], fmt)
        return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def prepare(base: Transformer, cfg: QuantConfig, rotation, had: bool, calib: torch.Tensor | None) -> Transformer:
    """A quantized copy of `base`: norms fused, (R1, R2) merged if given, R3/R4 (R4 folded) if `had`, quantized."""
    model = fuse_norms(copy.deepcopy(base))
    apply_rotations(model, *(rotation if rotation is not None else (None, None)), had=had)  # R4 folds even alone
    return quantize_model(model, cfg, calib if cfg.w_method == "gptq" else None, progress=False)


def learned_rotations(base: Transformer, tokenizer, s: Settings, had: bool) -> tuple:
    """Learn (or reuse a finished file of) R1/R2 for one variant; returns (R1, R2, info)."""
    name = f"rotations-{s.learn_precision}-{'had' if had else 'no_had'}.safetensors"
    path = s.out_dir / name
    wanted = {"steps": s.steps, "seq_len": s.train_seq_len, "lr": s.lr, "seed": s.seed, "had": had}
    wanted["loss_version"] = LOSS_VERSION
    if path.exists():
        try:
            R1, R2, info = load_rotations(path, base)
            if {k: info.get(k) for k in wanted} == wanted:
                console.print(f"reusing {path}")
                return R1, R2, info
        except IncompatibleFileError:
            pass
    cfg = QuantConfig.preset(s.learn_precision)
    calib = calibration_samples(tokenizer, s.steps, s.train_seq_len, seed=s.seed)
    heldout = test_windows(tokenizer, min(256, s.ppl_seq_len), 2)
    model = fuse_norms(copy.deepcopy(base))
    set_online_hadamards(model, had)
    start = time.perf_counter()
    R1, R2, history = learn_rotations(
        model,
        cfg,
        calib,
        steps=s.steps,
        lr=s.lr,
        seed=s.seed,
        had=had,
        checkpoint_path=s.out_dir / f".{name}.resume",
        progress=True,
    )
    info = {
        **wanted,
        "config": cfg.to_dict(),
        "seconds": time.perf_counter() - start,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "train_loss_mean_last5": sum(history[-5:]) / len(history[-5:]),
        "heldout_loss_start": held_out_loss(model, cfg, heldout, *random_rotations(base.args, s.seed), had),
        "heldout_loss_learned": held_out_loss(model, cfg, heldout, R1, R2, had),
    }
    save_rotations(path, base, R1, R2, info)
    return R1, R2, info


def evaluate(model: Transformer, tokenizer, windows, s: Settings, with_zeroshot: bool) -> tuple[float, float | None]:
    """(perplexity, zero-shot average of the headline metrics or None)."""
    ppl = perplexity(model, windows, progress=False)
    if not with_zeroshot or s.zeroshot_limit < 0:
        return ppl, None
    limit = s.zeroshot_limit or None
    zs = zeroshot(model, tokenizer, s.zeroshot_tasks, limit=limit, seed=s.seed, progress=False)
    return ppl, zs["average"]["headline"]


def run(s: Settings) -> list[Row]:
    """Run the whole job, print the table, write results.json and results.md into s.out_dir."""
    s.out_dir.mkdir(parents=True, exist_ok=True)
    job_start = time.perf_counter()
    torch.manual_seed(s.seed)
    # The XNNPACK baseline's export is minutes of one-threaded tracing: it runs beside the learning.
    exports = start_xnnpack_exports(s.model, s.out_dir / "bench", list(s.bench_variants))
    base, tokenizer = load_model(s.model)
    windows = test_windows(tokenizer, s.ppl_seq_len, s.ppl_windows or None)
    gptq_calib = calibration_samples(tokenizer, s.gptq_samples, s.gptq_seq_len, seed=s.seed + 1)
    console.print(f"[bold]model[/] {base.identity.get('name')}  [bold]ppl[/] {tuple(windows.shape)} windows")

    learned = {}
    for had in (False, True):
        with console.status(f"learning rotations ({'had' if had else 'no_had'})"):
            learned[had] = learned_rotations(base, tokenizer, s, had)
        info = learned[had][2]
        console.print(
            f"rotations {'had' if had else 'no_had'}: {info['seconds']:.0f} s, peak RSS {info['peak_rss_gb']:.2f} GB, "
            f"held-out loss {info['heldout_loss_start']:.3f} (random Hadamard) -> {info['heldout_loss_learned']:.3f}"
        )

    ppl, acc = evaluate(base, tokenizer, windows, s, True)
    rows = [Row("fp32", "FP32", "-", [ppl], [] if acc is None else [acc])]
    plot_rotation_effect(base, learned[True][:2], windows[:1, :256], s.out_dir / "outliers.png")
    zs_precision = s.precisions[-1]
    zs_method = s.w_methods[-1]
    total = len(s.precisions) * len(s.w_methods) * (s.quarot_seeds + 3)
    done = 0
    start = time.perf_counter()
    for precision in s.precisions:
        for w_method in s.w_methods:
            cfg = QuantConfig.preset(precision, w_method=w_method)
            with_zs = precision == zs_precision and w_method == zs_method
            variants = [("RTN", [None], False)]
            variants.append(("QuaRot", [random_rotations(base.args, seed) for seed in range(s.quarot_seeds)], True))
            variants.append(("SpinQuant no_had", [learned[False][:2]], False))
            variants.append(("SpinQuant had", [learned[True][:2]], True))
            for method, rotations, had in variants:
                row = Row(method, precision, w_method)
                for i, rotation in enumerate(rotations):
                    row_start = time.perf_counter()
                    model = prepare(base, cfg, rotation, had, gptq_calib)
                    ppl, acc = evaluate(model, tokenizer, windows, s, with_zs and i == 0)
                    row.ppl.append(ppl)
                    if acc is not None:
                        row.zeroshot.append(acc)
                    if s.export and method == "SpinQuant had" and precision == s.learn_precision:
                        save_quantized(
                            s.out_dir / f"spinquant-{precision}-{w_method}-had.safetensors", model, cfg, had, *rotation
                        )
                    del model
                    row.seconds += time.perf_counter() - row_start
                    done += 1
                    eta = (time.perf_counter() - start) / done * (total - done)
                    console.print(
                        f"  {precision} {w_method:4s} {method:17s} ppl {ppl:10.2f}  [{done}/{total}, ~{eta:.0f} s left]"
                    )
                rows.append(row)
    write_results(rows, learned, s, {"learn_and_evaluate": time.perf_counter() - job_start})
    if s.bench_variants:
        console.rule("decode speed through the ExecuTorch runtime (spinquant bench)")
        bench_start = time.perf_counter()
        for proc in exports:
            proc.join()
        run_bench(s.model, s.out_dir / "bench", list(s.bench_variants), threads=[1, 2], runs=5, log=console.print)
        seconds = {"learn_and_evaluate": bench_start - job_start, "bench": time.perf_counter() - bench_start}
        write_results(rows, learned, s, seconds)
    console.print(f"main job: {(time.perf_counter() - job_start) / 60:.1f} min")
    return rows


def plot_rotation_effect(base: Transformer, rotation, tokens: torch.Tensor, path: Path) -> None:
    """outliers.png: per-channel max |x| of a middle layer's residual and down_proj input, before and after."""
    layer = base.args.n_layers // 2
    fused = fuse_norms(copy.deepcopy(base))
    before = channel_maxima(fused, tokens, layer)
    apply_rotations(fused, *rotation, had=True)
    after = channel_maxima(fused, tokens, layer)
    plot_outliers(before, after, path, f"layer {layer}: original vs SpinQuant (learned R1/R2, R4 Hadamard)")
    console.print(f"wrote {path}")


def table(rows: list[Row]) -> Table:
    """A rich table: one row per method, perplexity (and zero-shot) per precision and weight quantizer."""
    t = Table(title="SpinQuant on " + "SmolLM2-135M (wiki.utf8 held-out perplexity; zero-shot average)")
    t.add_column("precision")
    t.add_column("weights")
    t.add_column("method")
    t.add_column("perplexity", justify="right")
    t.add_column("zero-shot", justify="right")
    for r in rows:
        t.add_row(r.precision, r.w_method, r.method, r.cell(r.ppl, ".2f"), r.cell(r.zeroshot, ".3f"))
    return t


def markdown(rows: list[Row]) -> str:
    """The same table as GitHub markdown."""
    lines = ["| precision | weights | method | perplexity | zero-shot |", "|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.precision} | {r.w_method} | {r.method} | {r.cell(r.ppl, '.2f')} | {r.cell(r.zeroshot, '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def write_results(rows: list[Row], learned: dict, s: Settings, seconds: dict[str, float]) -> None:
    """Print the table and save results.json / results.md (atomic writes); `seconds` = wall time per stage."""
    console.print(table(rows))
    payload = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()},
        "seconds": seconds,
        "rows": [dataclasses.asdict(r) for r in rows],
        "rotations": {("had" if had else "no_had"): info for had, (_, _, info) in learned.items()},
    }
    for name, text in (("results.json", json.dumps(payload, indent=2, default=str)), ("results.md", markdown(rows))):
        tmp = s.out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(s.out_dir / name)
