"""Weight quantization on the real model: time to quantize and perplexity, per configuration.

    PYTHONPATH=python python benchmarks/bench_quant.py W4A16 W4A16:w_group=0 W4A16:w_method=gptq \
        [--calib-samples 32] [--calib-len 512] [--windows anchor|test]

Each configuration is a preset name with optional `field=value` overrides after a colon (comma separated),
e.g. `W4A4KV4:w_method=gptq,w_clip_search=false`. `anchor` windows are FACTS.md's cross-check (the last
8 x 512 tokens of wiki.utf8); `test` uses the first 8 windows of 512 tokens of the held-out split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from spinquant.data import anchor_windows, calibration_samples, test_windows  # noqa: E402
from spinquant.eval.perplexity import perplexity  # noqa: E402
from spinquant.model import load_model  # noqa: E402
from spinquant.quant import QuantConfig, quantize_model  # noqa: E402


def parse_config(spec: str) -> QuantConfig:
    """`PRESET[:field=value,...]` -> QuantConfig (values parsed as JSON, else kept as strings)."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return dataclasses.replace(QuantConfig.preset(name), **overrides)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--windows", choices=("anchor", "test"), default="anchor")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    configs = [parse_config(spec) for spec in a.configs]
    _, tokenizer = load_model()
    windows = anchor_windows(tokenizer) if a.windows == "anchor" else test_windows(tokenizer, 512, 8)
    calib = None
    if any(c.w_method == "gptq" and c.quantizes_weights for c in configs):
        calib = calibration_samples(tokenizer, a.calib_samples, a.calib_len)
    print(f"| config | ppl ({a.windows}) | quantize wall s | quantize cpu s |")
    print("|---|---|---|---|")
    for cfg in configs:
        model, _ = load_model()
        wall, cpu = time.perf_counter(), time.process_time()
        quantize_model(model, cfg, calib, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        ppl = perplexity(model, windows, batch_size=2, progress=False)
        note = f" ({a.calib_samples}x{a.calib_len} calib)" if cfg.w_method == "gptq" else ""
        print(f"| {cfg}{note} | {ppl:.2f} | {wall:.1f} | {cpu:.1f} |", flush=True)


if __name__ == "__main__":
    main()
