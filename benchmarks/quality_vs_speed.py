"""One picture for users: perplexity against decode ms/token and against file size, for fp32, ExecuTorch XNNPACK
8da4w, llama.cpp Q4_0 / Q4_1 and our programs (W4A8 had / no_had, W4A4KV4 had with lm_head in 4 bits; W4A8 no_had
with the 8-bit embedding and lm_head), all on the same held-out tokens and the same protocol.

    python benchmarks/quality_vs_speed.py --bench benchmarks/results/bench-llama-cpp [--windows 8 --ctx 512]

Quality: llama.cpp's perplexity protocol (consecutive windows of --ctx tokens from the start of the held-out wiki
text, each run from its start, only each window's second half scored) -- `llama-perplexity` on the GGUFs and
`eval.perplexity.second_half_perplexity` on our eager models, whose logits equal the programs' (tests). XNNPACK
8da4w: the torchao-quantized eager decoder the program is lowered from. As a check that both sides see the same
tokens, llama-perplexity also scores an F32 GGUF made from the shipped Q4_1 file, which holds the weights of our fp32
model. Speed and size: decode ms/token at --threads from the bench folder's results.json (run `spinquant bench
--llama-cpp --memory --out FOLDER` first), file sizes of its .pte files and of the GGUFs; points the bench did
not time (llama.cpp Q4_1) are timed here with llama-bench (median of 3, same prompt length), marked in the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch

from spinquant.assets import default_model_dir
from spinquant.data import join_documents, test_windows, wiki_split
from spinquant.eval.perplexity import second_half_perplexity
from spinquant.export import llama_cpp
from spinquant.export.bench import ENDS8
from spinquant.export.cli import mode_config, prepare_model
from spinquant.model import load_model

OURS = ("w4a8_no_had", "w4a8_had", "w4a4kv4_had", "w4a8_no_had_ends8")
LABELS = {
    "fp32_eager": "fp32",
    "xnnpack_8da4w": "XNNPACK 8da4w",
    "llama_cpp_q4_0": "llama.cpp Q4_0",
    "llama_cpp_q4_1": "llama.cpp Q4_1",
    "w4a8_no_had": "ours W4A8 no_had (lm_head 4)",
    "w4a8_had": "ours W4A8 had (lm_head 4)",
    "w4a4kv4_had": "ours W4A4KV4 had (lm_head 4)",
    "w4a8_no_had_ends8": "ours W4A8 no_had, embed + lm_head 8",
}


def our_model(name: str, seed: int):
    model, _ = load_model(None)
    mode, had = name.removesuffix(ENDS8).split("_", 1)
    cfg = mode_config(mode.upper(), *((8, 8) if name.endswith(ENDS8) else ()))
    return prepare_model(model, cfg, had == "had", seed=seed)


def xnnpack_eager():
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    from spinquant.export.baseline import StandardDecoder

    model, _ = load_model(None)
    decoder = StandardDecoder(model, 512).eval()
    cfg = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32))
    quantize_(decoder, cfg, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear))
    return lambda ids: decoder(ids, torch.arange(ids.shape[1]))


def llama_gguf_f32(root: Path) -> Path:
    """An F32 GGUF of the shipped Q4_1 file (the weights of our fp32 model), made once."""
    out = root / f"{llama_cpp.GGUF_STEM}.F32.gguf"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        cmd = [str(llama_cpp.binary("llama-quantize", root)), "--allow-requantize", str(llama_cpp.gguf("Q4_1", root)),
               str(tmp), "F32"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        tmp.rename(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", type=Path, required=True, help="folder of a `spinquant bench --llama-cpp` run")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="the bench's thread count to plot")
    p.add_argument("--seed", type=int, default=0, help="rotation seed (as the bench's programs)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args()
    bench = json.loads((a.bench / "results.json").read_text())
    decode = {r["variant"]: r["decode_ms_per_token"] for r in bench["results"] if r["threads"] == a.threads}
    prompt_len = int(bench.get("prompt_len", 16))
    root = llama_cpp.folder()
    _, tokenizer = load_model(None)
    windows = test_windows(tokenizer, a.ctx, a.windows)

    ppl, size, how = {}, {}, {}
    model, _ = load_model(None)
    ppl["fp32_eager"] = second_half_perplexity(model, windows)
    size["fp32_eager"] = sum(f.stat().st_size for f in default_model_dir().glob("*.safetensors"))
    how["fp32_eager"] = "eager fp32 (weights dequantized from the shipped Q4_1 GGUF)"
    for name in OURS:
        ppl[name] = second_half_perplexity(our_model(name, a.seed), windows)
        size[name] = (a.bench / f"{name}.pte").stat().st_size
        how[name] = "eager quantized model (= the .pte's logits, tested), random Hadamard R1/R2 seed " + str(a.seed)
    ppl["xnnpack_8da4w"] = second_half_perplexity(xnnpack_eager(), windows)
    size["xnnpack_8da4w"] = (a.bench / "xnnpack_8da4w.pte").stat().st_size
    how["xnnpack_8da4w"] = "torchao 8da4w eager decoder (what the program is lowered from)"
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "test.txt"
        text.write_text(join_documents(wiki_split().test), encoding="utf-8")
        f32 = llama_cpp.perplexity(text, llama_gguf_f32(root), a.ctx, a.windows, a.threads)
        for quant in ("Q4_0", "Q4_1"):
            name = f"llama_cpp_{quant.lower()}"
            ppl[name] = llama_cpp.perplexity(text, llama_cpp.gguf(quant, root), a.ctx, a.windows, a.threads)
            size[name] = llama_cpp.gguf(quant, root).stat().st_size
            how[name] = "llama-perplexity on the same text"
    if "llama_cpp_q4_1" not in decode:
        bench_q41 = llama_cpp.LlamaBench(llama_cpp.gguf("Q4_1", root))
        runs = [bench_q41.run(a.threads, prompt_len, 32).decode_ms_per_token for _ in range(3)]
        decode["llama_cpp_q4_1"] = statistics.median(runs)
        how["llama_cpp_q4_1"] += "; decode timed here, not in the bench's rounds"

    rows = [n for n in LABELS if n in ppl and n in decode]
    table = ["| program | perplexity | decode ms/token | file MB | quality measured as |", "|---|---:|---:|---:|---|"]
    table += [f"| {LABELS[n]} | {ppl[n]:.3f} | {decode[n]:.2f} | {size[n] / 1e6:.1f} | {how[n]} |" for n in rows]
    check = f"fp32 {ppl['fp32_eager']:.4f} here, F32 GGUF {f32:.4f} in llama-perplexity"
    text = (
        f"Perplexity on the first {a.windows} x {a.ctx} held-out wiki tokens, second halves scored (llama.cpp's "
        f"protocol); decode at {a.threads} thread(s) from {a.bench}.\n\n"
        + "\n".join(table)
        + f"\n\nSame tokens: {check}\n"
    )
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "quality-vs-speed.md").write_text(text)
    plot(rows, ppl, decode, size, a.out / "quality-vs-speed.png", a)
    print(text)


def plot(rows, ppl, decode, size, path: Path, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, xs, xlabel in ((axes[0], decode, f"decode ms/token, {a.threads} thread(s)"), (axes[1], size, "file MB")):
        for n in rows:
            x = xs[n] / (1e6 if xs is size else 1)
            ax.scatter(x, ppl[n], marker="o" if n.startswith(("w4", "w8")) else "s")
            ax.annotate(LABELS[n], (x, ppl[n]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"perplexity ({a.windows} x {a.ctx} held-out tokens, second halves)")
    fig.suptitle("SmolLM2-135M: quality against speed and size (lower left is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
