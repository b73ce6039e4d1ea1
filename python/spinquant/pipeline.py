"""The main job: learn rotations, quantize with every method, evaluate with uncertainty, print the tables.

Methods (rows): fp32; no rotation; QuaRot-style random Hadamard R1/R2 with R3/R4 (several seeds);
SpinQuant learned R1/R2 without online Hadamards (no_had) and with them (had). Each method is quantized at
the recipe's precisions with the weight quantizers `Settings.gptq` / `Settings.rtn` name for it, plus the
device recipe's rows at `Settings.device_precisions` (what the exported program computes). Rotations are
learned once per variant at the recipe's learning target and reused everywhere.

Evaluation (`spinquant.eval`): perplexity on 2048-token windows of two held-out texts (wiki: the test part
of wiki.utf8; c4: all of c4.utf8; never calibration) with 95% bootstrap intervals over windows; paired
differences of mean NLL on the same windows for the comparisons the table draws (learned vs random, had vs
no_had, GPTQ vs RTN); zero-shot accuracy through lm-evaluation-harness for fp32, the best row and the device
row. GPTQ quantizes the weights once per rotation: its Hessians come from unquantized activations, so the
same quantized weights serve every activation/KV setting.

Sized for 30 minutes on 2 cores, where GPTQ at 32 x 2048 calibration tokens costs ~2 min a model and scoring
a model's 16 windows ~1.2 min, the default job draws the headline comparisons at W4A4KV4 with GPTQ: the
package's paper-scale rotations ("shipped", `spinquant rotations`) and the job's own short run ("had") against
random Hadamard ones (QuaRot over 3 seeds: their mean and their best seed), plus the device row (W4A8KV8,
learned had); `--gptq`, `--rtn` and `--device-methods` add no rotation, QuaRot, no_had (learned then) and RTN
rows, and `--full` runs every method everywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import resource
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from .checkpoint import IncompatibleFileError, load_rotations, save_quantized, save_rotations
from .data import HELDOUT_DOMAINS, calibration_samples, heldout_windows, test_windows
from .eval.harness import DEFAULT_TASKS, zeroshot
from .eval.perplexity import Perplexity, paired_difference, window_nlls
from .export.bench import VARIANTS, run_bench, start_xnnpack_exports
from .model import Transformer, load_model
from .plots import channel_maxima, plot_outliers
from .quant.apply import attach_quantizers, quantize_weights
from .quant.config import QuantConfig
from .recipes import recipe
from .rotation import apply_rotations, fuse_norms, random_rotations, set_online_hadamards
from .rotation.shipped import find_shipped, shipped_path
from .train import LOSS_VERSION, held_out_loss, learn_rotations

console = Console()
EVAL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = {
    "none": "no rotation",
    "quarot": "QuaRot",
    "no_had": "SpinQuant no_had",
    "had": "SpinQuant had",  # learned by this job (Settings.steps x train_batch x train_seq_len)
    "shipped": "SpinQuant had, shipped",  # learned at paper scale, shipped in the package (`spinquant rotations`)
    "shipped_no_had": "SpinQuant no_had, shipped",
}
SHIPPED = {"shipped": True, "shipped_no_had": False}  # the shipped methods and their online Hadamards
_BASELINES = (METHODS["quarot"], METHODS["no_had"], METHODS["none"])
COMPARED = {  # the learned methods, as the comparisons name them, and the rows each is compared with
    METHODS["had"]: ("had", _BASELINES),
    METHODS["shipped"]: ("shipped", (*_BASELINES, METHODS["had"], METHODS["shipped_no_had"])),
    METHODS["shipped_no_had"]: ("shipped no_had", _BASELINES),
}
OTHER_NAMES = {
    METHODS["had"]: "had (this job)",
    METHODS["no_had"]: "no_had (this job)",
    METHODS["shipped_no_had"]: "shipped no_had",
}


@dataclass
class Settings:
    """Sizes of the main job. The defaults fit ~30 minutes on 2 cores; `full()` is the paper-scale run."""

    model: str | None = None
    out_dir: Path = Path("runs/default")
    recipe: str = "official"
    precisions: tuple[str, ...] = ("W4A4KV4",)
    gptq: tuple[str, ...] = ("quarot", "had", "shipped")  # METHODS quantized with GPTQ
    rtn: tuple[str, ...] = ()  # METHODS quantized with RTN (`--rtn had` adds GPTQ vs RTN)
    device_precisions: tuple[str, ...] = ("W4A8KV8",)  # the device recipe's rows (none: skipped)
    device_methods: tuple[str, ...] = ("had",)  # METHODS of the device rows (GPTQ)
    steps: int = 24
    train_batch: int = 1
    train_seq_len: int = 512
    gptq_samples: int = 32
    gptq_seq_len: int = 2048
    ppl_windows: int = 8  # per held-out domain, spread over the text (0 = every window)
    ppl_seq_len: int = 2048
    eval_dtype: str = "fp32"
    quarot_seeds: int = 3
    zeroshot_limit: int = 60  # documents per task (0 = all, -1 = skip)
    zeroshot_tasks: tuple[str, ...] = DEFAULT_TASKS
    seed: int = 0
    export: bool = True
    # ExecuTorch's standard path (xnnpack_8da4w) is left to `spinquant bench` and --full: its export is ~5 min of
    # one-threaded tracing that a 2-core job at full load waits for.
    bench_variants: tuple[str, ...] = ("fp32_eager", "w4a8_no_had", "w4a8_had", "w4a4kv4_had")
    bench_runs: int = 2

    @classmethod
    def full(cls, **overrides) -> Settings:
        """Paper scale: the recipe's learning budget (100 steps x 8 x 2048) and GPTQ calibration (128 x 2048),
        every window of both held-out texts, every zero-shot document for every row, 5 QuaRot seeds."""
        r = recipe(overrides.get("recipe", cls.recipe))
        base = dict(
            precisions=tuple(r.precisions),
            steps=r.train.steps,
            train_batch=r.train.batch_size,
            train_seq_len=r.train.seq_len,
            gptq_samples=r.gptq_samples,
            gptq_seq_len=r.gptq_seq_len,
            gptq=tuple(METHODS),
            rtn=tuple(METHODS),
            device_methods=tuple(METHODS),
            device_precisions=tuple(recipe("device").precisions),
            ppl_windows=0,
            zeroshot_limit=0,
            quarot_seeds=5,
            bench_variants=VARIANTS,
            bench_runs=5,
        )
        return cls(**{**base, **overrides})

    def check(self) -> None:
        """One-line errors for impossible sizes, before any work."""
        r = recipe(self.recipe)
        for p in self.precisions:
            r.config(p)
        for p in self.device_precisions:
            recipe("device").config(p)
        for name in ("gptq", "rtn", "device_methods"):
            unknown = [m for m in getattr(self, name) if m not in METHODS]
            if unknown:
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag}: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        if not self.gptq and not self.rtn:
            raise ValueError("--gptq and --rtn are both empty: name at least one method to quantize")
        positive = (
            "steps",
            "train_batch",
            "train_seq_len",
            "gptq_samples",
            "gptq_seq_len",
            "ppl_seq_len",
            "bench_runs",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.ppl_windows < 0 or self.quarot_seeds < 0 or self.zeroshot_limit < -1:
            raise ValueError("--ppl-windows and --quarot-seeds must be >= 0 and --zeroshot-limit >= -1")
        if self.eval_dtype not in EVAL_DTYPES:
            raise ValueError(f"--eval-dtype must be one of {', '.join(EVAL_DTYPES)}, got {self.eval_dtype!r}")


@dataclass
class Row:
    """One evaluated configuration: per-window NLLs per held-out domain, one array per seed."""

    method: str
    recipe: str
    precision: str
    w_method: str
    nll: dict[str, list[np.ndarray]] = field(default_factory=dict)
    zeroshot: dict | None = None
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.recipe} {self.precision} {self.w_method} {self.method}"

    def mean_nll(self, domain: str) -> np.ndarray:
        """Per-window NLL averaged over seeds (what paired comparisons use)."""
        return np.mean(self.nll[domain], axis=0)

    def ppls(self, domain: str) -> list[float]:
        return [Perplexity.of(n).value for n in self.nll[domain]]

    def cell(self, domain: str) -> str:
        """`ppl [lo, hi]` for one model; `mean ± std (min-max)` of the seeds' perplexities for several."""
        values = self.ppls(domain)
        if len(values) == 1:
            lo, hi = Perplexity.of(self.nll[domain][0]).ci()
            return f"{values[0]:.2f} [{lo:.2f}, {hi:.2f}]"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    @property
    def seeds(self) -> int:
        return len(next(iter(self.nll.values())))

    def best_seed(self) -> Row:
        """The seed with the lowest pooled mean NLL, as a one-model row."""
        pooled = [np.mean([self.nll[d][i].mean() for d in self.nll]) for i in range(self.seeds)]
        i = int(np.argmin(pooled))
        name = f"{self.method.split(' (')[0]}'s best seed ({i})"
        return Row(name, self.recipe, self.precision, self.w_method, {d: [n[i]] for d, n in self.nll.items()})

    def pooled_ppl(self) -> float:
        return float(np.exp(np.mean([self.mean_nll(d).mean() for d in self.nll])))

    def zeroshot_cell(self) -> str:
        if not self.zeroshot:
            return "-"
        tasks = self.zeroshot["tasks"].values()
        stderr = np.sqrt(sum(t["stderr"] ** 2 for t in tasks)) / len(tasks)  # of the unweighted mean
        n = {t["n"] for t in tasks}
        return f"{self.zeroshot['average']['headline']:.3f} ± {stderr:.3f} ({'/'.join(map(str, sorted(n)))} docs)"

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "recipe": self.recipe,
            "precision": self.precision,
            "w_method": self.w_method,
            "seconds": self.seconds,
            "perplexity": {d: [Perplexity.of(n).to_dict() for n in seeds] for d, seeds in self.nll.items()},
            "zeroshot": self.zeroshot,
        }


@dataclass
class Clock:
    """Wall time per stage."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, since: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - since


def rotated(base: Transformer, rotation, had: bool) -> Transformer:
    """A copy of `base` with norms fused, (R1, R2) merged if given and R3/R4 (R4 folded) if `had`."""
    model = fuse_norms(copy.deepcopy(base))
    return apply_rotations(model, *(rotation if rotation is not None else (None, None)), had=had)


def prepare(base: Transformer, cfg: QuantConfig, rotation, had: bool, calib: torch.Tensor | None) -> Transformer:
    """A quantized copy of `base`: norms fused, rotations merged, R3/R4 if `had`, weights and quantizers."""
    model = quantize_weights(rotated(base, rotation, had), cfg, calib if cfg.w_method == "gptq" else None, False)
    return attach_quantizers(model, cfg)


def learned_rotations(base: Transformer, tokenizer, s: Settings, had: bool) -> tuple:
    """Learn (or reuse a finished file of) R1/R2 for one variant at the recipe's target; (R1, R2, info)."""
    r = recipe(s.recipe)
    name = f"rotations-{s.recipe}-{'had' if had else 'no_had'}.safetensors"
    path = s.out_dir / name
    wanted = {"recipe": s.recipe, "steps": s.steps, "batch_size": s.train_batch, "seq_len": s.train_seq_len}
    wanted.update(lr=r.train.lr, grad_clip=r.train.grad_clip, seed=s.seed, had=had, loss_version=LOSS_VERSION)
    wanted.update(train_dtype="bf16")  # as the official trainer; bf16 matmuls, float32 quantizer scales
    if path.exists():
        try:
            R1, R2, info = load_rotations(path, base)
            if {k: info.get(k) for k in wanted} == wanted:
                console.print(f"reusing {path}")
                return R1, R2, info
        except IncompatibleFileError:
            pass
    calib = calibration_samples(tokenizer, s.steps * s.train_batch, s.train_seq_len, seed=s.seed)
    heldout = test_windows(tokenizer, 256, 2)
    model = fuse_norms(copy.deepcopy(base))
    set_online_hadamards(model, had)
    start = time.perf_counter()
    R1, R2, history = learn_rotations(
        model,
        r.learn,
        calib,
        steps=s.steps,
        lr=r.train.lr,
        grad_clip=r.train.grad_clip,
        batch_size=s.train_batch,
        seed=s.seed,
        had=had,
        checkpoint_path=s.out_dir / f".{name}.resume",
        progress=True,
        compute_dtype=torch.bfloat16,
        micro_batch=min(4, s.train_batch),  # 4 x 2048 tokens at a time: ~13 GB on the default model
    )
    info = {
        **wanted,
        "config": r.learn.to_dict(),
        "seconds": time.perf_counter() - start,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "train_loss_mean_last5": sum(history[-5:]) / len(history[-5:]),
        "heldout_loss_start": held_out_loss(model, r.learn, heldout, *random_rotations(base.args, s.seed), had),
        "heldout_loss_learned": held_out_loss(model, r.learn, heldout, R1, R2, had),
    }
    save_rotations(path, base, R1, R2, info)
    return R1, R2, info


SHIPPED_FIELDS = ("gptq", "rtn", "device_methods")


def shipped_rotations(base: Transformer, recipe_name: str, had: bool) -> tuple | None:
    """The package's paper-scale rotations for `base`, the recipe and `had`, (R1, R2, info); None (said) if none."""
    name = find_shipped(base.identity.get("fingerprint"), recipe_name, had=had)
    if name is None:
        kind = "had" if had else "no_had"
        console.print(f"no shipped {kind} rotations for this model and recipe {recipe_name}: those rows are skipped")
        return None
    R1, R2, info = load_rotations(shipped_path(name), base)
    held = info.get("heldout_loss", {})
    console.print(
        f"shipped rotations {name}: learned {info['steps']} x {info['batch_size']} x {info['seq_len']} tokens "
        f"({info.get('date')}, commit {info.get('commit')}), held-out loss {held.get('start', float('nan')):.3f} "
        f"(random Hadamard) -> {held.get('learned', float('nan')):.3f}"
    )
    return R1, R2, {**info, "name": name}


@dataclass
class Variant:
    """A rotation method: its METHODS key, one rotation per seed (None = no rotation), online Hadamards or not."""

    key: str
    rotations: list
    had: bool

    @property
    def method(self) -> str:
        seeds = len(self.rotations)
        return f"QuaRot ({seeds} seeds)" if self.key == "quarot" and seeds > 1 else METHODS[self.key]


class Evaluator:
    """Scores models on the held-out windows (and zero-shot); keeps the stage clock."""

    def __init__(self, tokenizer, windows: dict[str, torch.Tensor], s: Settings, clock: Clock):
        self.tokenizer, self.windows, self.s, self.clock = tokenizer, windows, s, clock

    def nll(self, model: Transformer) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        dtype = EVAL_DTYPES[self.s.eval_dtype]
        out = {d: window_nlls(model, w, progress=False, dtype=dtype) for d, w in self.windows.items()}
        self.clock.add("perplexity", start)
        return out

    def zeroshot(self, model: Transformer) -> dict | None:
        if self.s.zeroshot_limit < 0:
            return None
        start = time.perf_counter()
        limit = self.s.zeroshot_limit or None
        result = zeroshot(model, self.tokenizer, self.s.zeroshot_tasks, limit=limit, seed=self.s.seed, progress=False)
        self.clock.add("zero-shot", start)
        return result


def variants(base: Transformer, learned: dict, keys: tuple[str, ...], seeds: int) -> list[Variant]:
    """The methods `keys` names, in METHODS order; QuaRot with `seeds` random Hadamard seeds."""
    made = {
        "none": lambda: Variant("none", [None], False),
        "quarot": lambda: Variant("quarot", [random_rotations(base.args, seed) for seed in range(seeds)], True),
        "no_had": lambda: Variant("no_had", [learned[False][:2]], False),
        "had": lambda: Variant("had", [learned[True][:2]], True),
        "shipped": lambda: Variant("shipped", [learned["shipped"][:2]], True),
        "shipped_no_had": lambda: Variant("shipped_no_had", [learned["shipped_no_had"][:2]], False),
    }
    return [made[k]() for k in METHODS if k in keys]


def weight_quantized(
    base: Transformer, variant: Variant, cfgs: list[QuantConfig], calib: torch.Tensor, clock: Clock
) -> Iterator[tuple[QuantConfig, Transformer]]:
    """Per seed of `variant`, rotated once: (cfg, the model with weights quantized per cfg) for each of `cfgs`."""
    for rotation in variant.rotations:
        start = time.perf_counter()
        model = rotated(base, rotation, variant.had)
        clock.add("rotating", start)
        for i, cfg in enumerate(cfgs):
            start = time.perf_counter()
            copy_ = model if i == len(cfgs) - 1 else copy.deepcopy(model)
            quantized = quantize_weights(copy_, cfg, calib if cfg.w_method == "gptq" else None, progress=False)
            clock.add(f"weights {cfg.w_method}", start)
            yield cfg, quantized


class Best:
    """The lowest-perplexity single-model row at the headline precision, with its model (for zero-shot)."""

    def __init__(self):
        self.row: Row | None = None
        self.model: Transformer | None = None

    def offer(self, row: Row, model: Transformer) -> None:
        if self.row is None or row.pooled_ppl() < self.row.pooled_ppl():
            self.row, self.model = row, model


def scored(row: Row, model: Transformer, cfg: QuantConfig, ev: Evaluator) -> Transformer:
    """A copy of the weight-quantized `model` with cfg's activation/KV quantizers, its per-window NLLs added to
    `row` (one more seed); returns that copy."""
    quantized = attach_quantizers(copy.deepcopy(model), cfg)
    for domain, nll in ev.nll(quantized).items():
        row.nll.setdefault(domain, []).append(nll)
    return quantized


def evaluate_rows(base, learned, ev: Evaluator, s: Settings, calib, clock: Clock) -> tuple[list[Row], Best]:
    """Every (method, weight quantizer, precision) row of the recipe; each rotation merged once, the weights
    quantized once per weight quantizer and shared by every precision."""
    r = recipe(s.recipe)
    rows: dict[tuple, Row] = {}
    best = Best()
    todo = variants(base, learned, (*s.gptq, *s.rtn), s.quarot_seeds)
    w_methods = {v.key: [m for m in ("rtn", "gptq") if v.key in getattr(s, m)] for v in todo}
    total = sum(len(v.rotations) * len(w_methods[v.key]) for v in todo)
    done, start = 0, time.perf_counter()
    for variant in todo:
        weight_cfgs = [r.config(s.precisions[0], w_method=m) for m in w_methods[variant.key]]
        for wcfg, model in weight_quantized(base, variant, weight_cfgs, calib, clock):
            for precision in s.precisions:
                cfg = r.config(precision, w_method=wcfg.w_method)
                key = (precision, wcfg.w_method, variant.method)
                row = rows.setdefault(key, Row(variant.method, r.name, precision, wcfg.w_method))
                t0 = time.perf_counter()
                quantized = scored(row, model, cfg, ev)
                row.seconds += time.perf_counter() - t0
                if precision == s.precisions[-1] and len(variant.rotations) == 1:  # not a mean over seeds
                    best.offer(row, quantized)
            done += 1
            eta = (time.perf_counter() - start) / done * (total - done)
            progress = f"[{done}/{total} models, ~{eta / 60:.1f} min left]"
            console.print(f"  {wcfg.w_method:4s} {variant.method:18s} pooled ppl {row.pooled_ppl():8.2f}  {progress}")
    order = {k: (s.precisions.index(k[0]), ("rtn", "gptq").index(k[1])) for k in rows}
    return [rows[k] for k in sorted(rows, key=order.get)], best


def device_rows(base, learned, ev: Evaluator, s: Settings, calib, clock: Clock) -> list[Row]:
    """The device recipe at `s.device_precisions` (GPTQ, the weights quantized once and shared by every
    precision) for `s.device_methods` (QuaRot: `s.quarot_seeds` seeds); zero-shot and the exported checkpoint
    for SpinQuant had at the first precision."""
    r = recipe("device")
    wcfg = r.config(s.device_precisions[0])
    rows: dict[tuple[str, str], Row] = {}
    for variant in variants(base, learned, s.device_methods, s.quarot_seeds):
        for _, model in weight_quantized(base, variant, [wcfg], calib, clock):
            for precision in s.device_precisions:
                cfg, key = r.config(precision), (precision, variant.method)
                row = rows.setdefault(key, Row(variant.method, r.name, precision, wcfg.w_method))
                quantized = scored(row, model, cfg, ev)
                if variant.key == "had" and precision == s.device_precisions[0]:
                    row.zeroshot = ev.zeroshot(quantized)
                    if s.export:
                        path = s.out_dir / f"spinquant-device-{precision}-had.safetensors"
                        save_quantized(path, quantized, cfg, True, *learned[True][:2])
        for precision in s.device_precisions:
            row = rows[precision, variant.method]
            console.print(f"  device {precision} {variant.method}: pooled ppl {row.pooled_ppl():.2f}")
    return sorted(rows.values(), key=lambda row: s.device_precisions.index(row.precision))


def comparisons(rows: list[Row]) -> list[tuple[str, Row, Row]]:
    """The pairs the table draws: learned (here, and shipped) vs random (the seeds' mean, and their best seed),
    shipped vs learned here, had vs no_had, learned vs none, GPTQ vs RTN."""
    by = {(r.recipe, r.precision, r.w_method, r.method.split(" (")[0]): r for r in rows}
    pairs = []
    for (rec, precision, w_method, method), row in by.items():
        key = (rec, precision, w_method)
        if method in COMPARED:
            name, others = COMPARED[method]
            for other in others:
                if (*key, other) in by:
                    label = OTHER_NAMES.get(other, other)
                    pairs.append((f"{rec} {precision} {w_method}: {name} vs {label}", row, by[(*key, other)]))
            quarot = by.get((*key, "QuaRot"))
            if quarot is not None and quarot.seeds > 1:
                best = quarot.best_seed()
                pairs.append((f"{rec} {precision} {w_method}: {name} vs {best.method}", row, best))
        if w_method == "gptq" and (rec, precision, "rtn", method) in by:
            pairs.append((f"{rec} {precision} {method}: GPTQ vs RTN", row, by[(rec, precision, "rtn", method)]))
    return pairs


def run(s: Settings) -> list[Row]:
    """Run the whole job, print the tables, write results.json and results.md into s.out_dir."""
    s.check()
    s.out_dir.mkdir(parents=True, exist_ok=True)
    clock, job_start = Clock(), time.perf_counter()
    torch.manual_seed(s.seed)
    # The XNNPACK baseline's export is minutes of one-threaded tracing: it runs beside the learning.
    exports = start_xnnpack_exports(s.model, s.out_dir / "bench", list(s.bench_variants))
    base, tokenizer = load_model(s.model)
    per_domain = s.ppl_windows or None
    windows = {d: heldout_windows(tokenizer, d, s.ppl_seq_len, per_domain) for d in HELDOUT_DOMAINS}
    calib = calibration_samples(tokenizer, s.gptq_samples, s.gptq_seq_len, seed=s.seed + 1)
    sizes = ", ".join(f"{d} {w.shape[0]} x {w.shape[1]}" for d, w in windows.items())
    console.print(
        f"[bold]model[/] {base.identity.get('name')}  [bold]held-out windows[/] {sizes}  [bold]recipe[/] {s.recipe}  "
        f"[bold]GPTQ calibration[/] {s.gptq_samples} x {s.gptq_seq_len}"
    )

    learned = {}
    needs_no_had = "no_had" in (*s.gptq, *s.rtn, *s.device_methods)
    for had in (False, True) if needs_no_had else (True,):
        start = time.perf_counter()
        learned[had] = learned_rotations(base, tokenizer, s, had)
        clock.add("rotation learning", start)
        info = learned[had][2]
        console.print(
            f"rotations {'had' if had else 'no_had'}: {info['seconds']:.0f} s, peak RSS {info['peak_rss_gb']:.2f} GB, "
            f"held-out loss {info['heldout_loss_start']:.3f} (random Hadamard) -> {info['heldout_loss_learned']:.3f}"
        )
    for key, had in SHIPPED.items():
        if key in (*s.gptq, *s.rtn, *s.device_methods):
            learned[key] = shipped_rotations(base, s.recipe, had)
            if learned[key] is None:
                del learned[key]
                s = dataclasses.replace(s, **{k: tuple(m for m in getattr(s, k) if m != key) for k in SHIPPED_FIELDS})
    plot_rotation_effect(base, learned[True][:2], windows["wiki"][:1, :256], s.out_dir / "outliers.png")

    ev = Evaluator(tokenizer, windows, s, clock)
    fp32 = Row("fp32", "-", "FP32", "-", {d: [n] for d, n in ev.nll(base).items()})
    console.print(f"  fp32: pooled ppl {fp32.pooled_ppl():.2f}")
    recipe_rows, best = evaluate_rows(base, learned, ev, s, calib, clock)
    rows = [fp32, *recipe_rows]
    if s.device_precisions:
        rows += device_rows(base, learned, ev, s, calib, clock)
    zeroshot_rows(base, learned, rows, best, ev, s, calib)
    write_results(rows, learned, s, clock.seconds)
    if s.bench_variants:
        console.rule("decode speed through the ExecuTorch runtime (spinquant bench)")
        start = time.perf_counter()
        for proc in exports:
            proc.join()
        run_bench(
            s.model, s.out_dir / "bench", list(s.bench_variants), threads=[1, 2], runs=s.bench_runs, log=console.print
        )
        clock.add("export and decode benchmark", start)
        write_results(rows, learned, s, clock.seconds)
    console.print(stage_table(clock.seconds, time.perf_counter() - job_start))
    return rows


def zeroshot_rows(base, learned, rows: list[Row], best: Best, ev: Evaluator, s: Settings, calib) -> None:
    """Zero-shot for fp32 and the best headline-precision row (every row with --full: zeroshot_limit 0; those
    rows' models are made again, QuaRot at seed 0)."""
    targets = rows if s.zeroshot_limit == 0 else [rows[0], best.row]
    for row in targets:
        if row is None or row.zeroshot is not None or s.zeroshot_limit < 0:
            continue
        if row.method == "fp32":
            model = base
        elif row is best.row:
            model = best.model
        else:
            key = max((k for k, name in METHODS.items() if row.method.startswith(name)), key=lambda k: len(METHODS[k]))
            variant = variants(base, learned, (key,), 1)[0]
            cfg = recipe(row.recipe).config(row.precision, w_method=row.w_method)
            model = prepare(base, cfg, variant.rotations[0], variant.had, calib)
        row.zeroshot = ev.zeroshot(model)
        console.print(f"  zero-shot {row.label}: {row.zeroshot_cell()}")


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
    """Perplexity per held-out domain (95% CI over windows; seeds: mean ± std (min-max)) and zero-shot."""
    t = Table(title="SpinQuant on SmolLM2-135M: held-out perplexity [95% CI], zero-shot average ± stderr")
    for name in ("recipe", "precision", "weights", "method", *HELDOUT_DOMAINS, "zero-shot"):
        t.add_column(name, justify="right" if name in (*HELDOUT_DOMAINS, "zero-shot") else "left")
    for r in rows:
        t.add_row(r.recipe, r.precision, r.w_method, r.method, *(r.cell(d) for d in HELDOUT_DOMAINS), r.zeroshot_cell())
    return t


def comparison_lines(rows: list[Row]) -> list[dict]:
    """Each comparison per domain: mean NLL difference (a - b) with its paired 95% CI."""
    out = []
    for label, a, b in comparisons(rows):
        for d in HELDOUT_DOMAINS:
            diff = paired_difference(a.mean_nll(d), b.mean_nll(d))
            out.append({"comparison": label, "domain": d, "ppl_ratio": diff.ratio, **diff.to_dict()})
    return out


def comparison_table(lines: list[dict]) -> Table:
    t = Table(title="Paired differences on the same windows: mean NLL(a) - NLL(b), 95% bootstrap CI (< 0: a better)")
    for name in ("comparison", "domain", "ΔNLL [95% CI]", "ppl ratio", "significant"):
        t.add_column(name)
    for c in lines:
        lo, hi = c["ci95"]
        diff = f"{c['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        t.add_row(c["comparison"], c["domain"], diff, f"{c['ppl_ratio']:.3f}", "yes" if c["significant"] else "no")
    return t


def stage_table(seconds: dict[str, float], total: float) -> Table:
    t = Table(title=f"main job: {total / 60:.1f} min")
    t.add_column("stage")
    t.add_column("minutes", justify="right")
    for stage, sec in seconds.items():
        t.add_row(stage, f"{sec / 60:.1f}")
    return t


def markdown(rows: list[Row], lines: list[dict]) -> str:
    """Both tables as GitHub markdown."""
    out = [
        "| recipe | precision | weights | method | " + " | ".join(HELDOUT_DOMAINS) + " | zero-shot |",
        "|---|---|---|---|" + "---:|" * (len(HELDOUT_DOMAINS) + 1),
    ]
    for r in rows:
        cells = " | ".join(r.cell(d) for d in HELDOUT_DOMAINS)
        out.append(f"| {r.recipe} | {r.precision} | {r.w_method} | {r.method} | {cells} | {r.zeroshot_cell()} |")
    out += ["", "| comparison | domain | ΔNLL [95% CI] | ppl ratio | significant |", "|---|---|---:|---:|---|"]
    for c in lines:
        lo, hi = c["ci95"]
        sig = "yes" if c["significant"] else "no"
        diff = f"{c['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        out.append(f"| {c['comparison']} | {c['domain']} | {diff} | {c['ppl_ratio']:.3f} | {sig} |")
    return "\n".join(out) + "\n"


def write_results(rows: list[Row], learned: dict, s: Settings, seconds: dict[str, float]) -> None:
    """Print the tables and save results.json / results.md (atomic writes); `seconds` = wall time per stage."""
    lines = comparison_lines(rows)
    console.print(table(rows))
    console.print(comparison_table(lines))
    payload = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()},
        "seconds": seconds,
        "rows": [r.to_dict() for r in rows],
        "comparisons": lines,
        "rotations": {{True: "had", False: "no_had"}.get(k, k): info for k, (_, _, info) in learned.items()},
    }
    texts = {"results.json": json.dumps(payload, indent=2, default=str), "results.md": markdown(rows, lines)}
    for name, text in texts.items():
        tmp = s.out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(s.out_dir / name)
