"""Pictures: activation outliers per channel before and after rotation."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .hadamard import hadamard_transform
from .model import Transformer


@torch.no_grad()
def channel_maxima(model: Transformer, tokens: Tensor, layer: int) -> dict[str, Tensor]:
    """Max |activation| per channel over `tokens` for layer `layer`'s residual input and down_proj input.

    The down_proj input is taken as its quantizer sees it: after the online Hadamard (R4) when it is on.
    """
    seen: dict[str, Tensor] = {}
    block = model.layers[layer]

    def residual_hook(_module, args):
        seen["residual"] = args[0].abs().flatten(0, -2).amax(0)

    def down_hook(module, args):
        x = hadamard_transform(args[0]) if module.online_had else args[0]  # before the activation quantizer
        seen["down_proj input"] = x.abs().flatten(0, -2).amax(0)

    handles = [block.register_forward_pre_hook(residual_hook), block.mlp.down_proj.register_forward_pre_hook(down_hook)]
    try:
        model(tokens)
    finally:
        for h in handles:
            h.remove()
    return seen


def plot_outliers(before: dict[str, Tensor], after: dict[str, Tensor], path: str | Path, title: str) -> Path:
    """Bar charts of per-channel max |x|, original model on top, rotated below; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(before)
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 6), squeeze=False)
    for col, name in enumerate(names):
        for row, (label, data) in enumerate((("original", before), ("rotated", after))):
            values = data[name].float().numpy()
            ax = axes[row][col]
            ax.bar(range(len(values)), values, width=1.0, color="tab:red" if row == 0 else "tab:blue")
            ax.set_title(f"{name}, {label}: max {values.max():.1f}, median {float(torch.tensor(values).median()):.2f}")
            ax.set_xlabel("channel")
            ax.set_ylabel("max |x| over tokens")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
