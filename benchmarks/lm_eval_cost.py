"""Work of a zero-shot run, counted without running the model: the padded tokens and lm_head positions our
adapter computes for the first N documents of each default task, against scoring every request as its own
sequence with lm_head at every position (lm-eval's `hf` model, and spinquant's earlier scorer), in FLOPs.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/lm_eval_cost.py 100
"""

import sys

from spinquant.eval import harness
from spinquant.model import load_model

n = int(sys.argv[1])
model, tok = load_model()
stats = {"padded": 0, "real": 0, "picked": 0, "batches": 0, "requests_tokens": 0}


class Counting(harness.SpinQuantLM):
    def _score(self, batch):
        tokens, positions, mask, picks = harness.pack(batch)
        stats["padded"] += tokens.numel()
        stats["batches"] += 1
        stats["real"] += sum(g.length for g in batch)
        for _, _, (index, cont) in picks:
            stats["picked"] += len(cont)
            yield index, (0.0, False)

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kw):
        stats["requests_tokens"] += sum(len(c) + len(k) - 1 for _, c, k in requests)
        return super()._loglikelihood_tokens(requests, disable_tqdm, **kw)


harness.run_lm_eval(Counting(model, tok), list(harness.DEFAULT_TASKS), n)
layer_params = sum(p.numel() for name, p in model.named_parameters() if name.startswith("layers."))
head = model.lm_head.weight.numel()
flops = 2 * layer_params * stats["padded"] + 2 * head * stats["picked"]
flops_hf = 2 * (layer_params + head) * stats["requests_tokens"]
print(stats, f"layer params {layer_params / 1e6:.1f}M, lm_head {head / 1e6:.1f}M")
print(
    f"{8 * n} docs: adapter {flops / 1e12:.2f} TFLOP, "
    f"one request per sequence with lm_head everywhere {flops_hf / 1e12:.2f} TFLOP"
)
for gflops in (90, 300):
    print(f"  at {gflops} GFLOPS: adapter {flops / gflops / 1e9:.0f} s")
