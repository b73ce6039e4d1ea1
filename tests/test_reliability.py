"""Hostile input to the real command line (docs/RELIABILITY.md): every refusal is one line, exit status 2, before
the work; damaged files are refused, never run; nothing the user has is destroyed. Plus a seeded fuzz test of the
loaders: each truncated or byte-flipped copy of a rotation file, a checkpoint and a .pte is refused or loads to the
identical result."""

import os
import random
import shutil
import time
from pathlib import Path

import pytest
import torch

from spinquant.checkpoint import IncompatibleFileError, load_quantized, load_rotations, save_rotations
from spinquant.cli import export_main, main
from spinquant.model import load_model
from spinquant.rotation import random_rotations
from spinquant.safe_write import TEMP_SUFFIX, write_atomic


@pytest.fixture(scope="module")
def files(tiny_folder, tmp_path_factory):
    """Real artifacts of the tiny model: a rotation file, an int4 checkpoint made with it, a .pte from that."""
    out = tmp_path_factory.mktemp("artifacts")
    model, _ = load_model(tiny_folder)
    R1, R2 = random_rotations(model.args, seed=0)
    rot = save_rotations(out / "rot.safetensors", model, R1, R2, {"steps": 0})
    ckpt = out / "q.safetensors"
    main(
        ["quantize", "--model", str(tiny_folder), "--rotation", str(rot), "--precision", "W4A8KV8", "--out", str(ckpt)]
    )
    pte = out / "q.pte"
    export_main(["--checkpoint", str(ckpt), "--tokenizer", str(tiny_folder), "--max-seq-len", "32", "-o", str(pte)])
    return {"folder": tiny_folder, "rot": rot, "ckpt": ckpt, "pte": pte, "model": model, "R": (R1, R2)}


def refused(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit status 2 and one line on stderr; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"spinquant {argv[0]}: error: "), err
    return err


def damaged_rotation(files, tmp_path: Path, how: str) -> Path:
    """A copy of the rotation file whose R1 is scaled, noisy, NaN, misshapen, or has flipped bytes."""
    R1, R2 = (r.clone() for r in files["R"])
    path = tmp_path / f"rot-{how}.safetensors"
    if how == "flipped":
        image = bytearray(files["rot"].read_bytes())
        image[-100] ^= 0x40
        path.write_bytes(image)
        return path
    if how == "scaled":
        R1 *= 1.01
    elif how == "noisy":
        R1 += 1e-2 * torch.randn(R1.shape, generator=torch.Generator().manual_seed(0), dtype=R1.dtype)
    elif how == "nan":
        R1[3, 5] = float("nan")
    elif how == "shape":
        R2 = R2[:1]
    return save_rotations(path, files["model"], R1, R2, {})


# ---- 1. silent garbage from files that parse -------------------------------------------------------------


@pytest.mark.parametrize(
    "how, message",
    [
        ("scaled", "R1 is not orthogonal"),
        ("noisy", "R1 is not orthogonal"),
        ("nan", "R1 holds NaN"),
        ("flipped", "is damaged"),
        ("shape", "R2 has shape [1, 16, 16]"),
    ],
)
def test_bad_rotations_are_refused_by_every_reader(files, tmp_path, capsys, how, message):
    rot = str(damaged_rotation(files, tmp_path, how))
    model = ["--model", str(files["folder"])]
    assert message in refused(["eval", *model, "--rotation", rot, "--ppl-windows", "1", "--ppl-seq-len", "16"], capsys)
    assert message in refused(["quantize", *model, "--rotation", rot, "--out", str(tmp_path / "q.safetensors")], capsys)
    assert message in refused(["export", *model, "--rotation", rot, "-o", str(tmp_path / "m.pte")], capsys)
    assert not (tmp_path / "q.safetensors").exists() and not (tmp_path / "m.pte").exists()


def test_training_that_diverges_writes_nothing(files, tmp_path, capsys):
    out = tmp_path / "rot.safetensors"
    argv = ["optimize", "--model", str(files["folder"]), "--steps", "2", "--seq-len", "16", "--out", str(out)]
    assert "--lr must be a finite number > 0, got nan" in refused([*argv, "--lr", "nan"], capsys)
    from spinquant.quant.config import QuantConfig
    from spinquant.rotation import fuse_norms
    from spinquant.train import NonFiniteError, learn_rotations

    model, _ = load_model(files["folder"])
    with torch.no_grad():
        model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    calib = torch.randint(0, 1000, (2, 16))
    with pytest.raises(NonFiniteError, match="step 0: .* is not finite; no result file was written"):
        learn_rotations(fuse_norms(model), QuantConfig.preset("W4A4KV4"), calib, steps=2, progress=False)
    assert not out.exists()


# ---- 2. corruption inside tensor data ------------------------------------------------------------------


def test_flipped_tensor_bytes_are_caught(files, tmp_path, capsys):
    ckpt = tmp_path / "q.safetensors"
    image = bytearray(files["ckpt"].read_bytes())
    image[len(image) // 2] ^= 0x01
    ckpt.write_bytes(image)
    assert "is damaged" in refused(["eval", "--checkpoint", str(ckpt), "--ppl-windows", "1"], capsys)
    pte = tmp_path / "q.pte"
    image = bytearray(files["pte"].read_bytes())
    image[len(image) // 2] ^= 0x01
    pte.write_bytes(image)
    assert "is damaged" in refused(["run", str(pte), "--prompt", "Hi", "--max-new-tokens", "2"], capsys)


# ---- 3. existing files destroyed -----------------------------------------------------------------------


def test_outputs_that_would_destroy_something_are_refused(files, tmp_path, capsys):
    model = ["--model", str(files["folder"])]
    ckpt = tmp_path / "q.safetensors"
    shutil.copy(files["ckpt"], ckpt)
    before = ckpt.read_bytes()
    err = refused(["optimize", *model, "--steps", "1", "--seq-len", "16", "--out", str(ckpt)], capsys)
    assert "exists and holds another kind of file (int4 checkpoint, not a rotation file)" in err
    assert ckpt.read_bytes() == before
    rot = tmp_path / "rot.safetensors"
    shutil.copy(files["rot"], rot)
    assert "is also the input --rotation" in refused(
        ["quantize", *model, "--rotation", str(rot), "--out", str(rot)], capsys
    )
    fifo = tmp_path / "fifo.pte"
    os.mkfifo(fifo)
    assert "not a regular file" in refused(["export", *model, "-o", str(fifo)], capsys)
    assert "is a folder" in refused(["quantize", *model, "--out", str(tmp_path)], capsys)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "cannot write in" in refused(["quantize", *model, "--out", str(blocker / "q.safetensors")], capsys)


def test_temp_files_never_outlive_a_write(tmp_path, capsys):
    target = tmp_path / "out.bin"
    stale = tmp_path / f".out.bin.999999999{TEMP_SUFFIX}"  # a pid no process has: a killed writer's leftover
    stale.write_bytes(b"partial")
    write_atomic(target, b"data")
    assert "removed" in capsys.readouterr().err and not stale.exists()
    with pytest.raises(TypeError):  # the write fails half-way: the target stays, the temp file goes
        write_atomic(target, "not bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"] and target.read_bytes() == b"data"


# ---- 4. tracebacks instead of messages; 5. late or wrong validation ------------------------------------


def test_every_refusal_is_one_line_and_early(files, tmp_path, capsys):
    folder, ckpt, pte = str(files["folder"]), str(files["ckpt"]), str(files["pte"])
    truncated = tmp_path / "trunc"
    shutil.copytree(folder, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    wrong = tmp_path / "latin1"
    cases = [
        (["eval", "--model", str(truncated), "--ppl-windows", "1"], ""),
        (["eval", "--model", folder, "--threads", "-1"], "--threads must be a number >= 0, got -1"),
        (["export", "--model", folder, "--max-seq-len", "0", "-o", str(tmp_path / "m.pte")], "--max-seq-len"),
        (["export", "--checkpoint", ckpt, "--no-had", "-o", str(tmp_path / "m.pte")], "drop --no-had"),
        (["eval", "--model", folder, "--ppl-windows", "-1"], "--ppl-windows must be a number >= 0"),
        (["optimize", "--model", folder, "--steps", "0", "--out", str(tmp_path / "r.safetensors")], "--steps"),
        (["run", pte, "--prompt", "Hi", "--max-new-tokens", "-5"], "--max-new-tokens must be a number >= 1"),
        (["quantize", "--model", folder, "--w-group", "7", "--out", str(tmp_path / "q.safetensors")], "--w-group 7"),
        (["quantize", "--model", folder, "--w-bits", "16", "--out", str(tmp_path / "q.safetensors")], "--w-bits 16"),
        (["eval", "--checkpoint", ckpt, "--w-bits", "4"], "cannot change a --checkpoint"),
        (["run", pte, "--prompt", "Hi", "--tokenizer", str(tmp_path / "none")], "--tokenizer"),
        (["run", pte, "--prompt", os.fsdecode(b"caf\xe9")], "--prompt is not UTF-8"),
        (["run", str(wrong), "--prompt", "Hi"], "no such file"),
    ]
    for argv, message in cases:
        start = time.perf_counter()
        assert message in refused(argv, capsys), argv
        assert time.perf_counter() - start < 10, argv  # refused before any long work


def test_interrupt_is_one_line_with_how_to_resume(files, tmp_path, capsys, monkeypatch):
    import spinquant.cli as cli

    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_optimize", interrupted)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["optimize", "--model", str(files["folder"]), "--out", str(tmp_path / "r.safetensors")])
    assert info.value.code == 130
    assert capsys.readouterr().err.strip() == (
        "spinquant optimize: interrupted; the state saved every --checkpoint-every steps is kept: "
        "rerun the same command to resume"
    )


def test_debug_shows_the_traceback(files, monkeypatch):
    monkeypatch.setenv("SPINQUANT_DEBUG", "1")
    with pytest.raises(IncompatibleFileError):
        main(["eval", "--checkpoint", str(files["rot"]), "--ppl-windows", "1"])


# ---- fuzz: truncations and byte flips of each artifact -------------------------------------------------

MUTATIONS = 12  # per file, half truncations and half byte flips (seeded)


def mutations(image: bytes, seed: int):
    rng = random.Random(seed)
    for i in range(MUTATIONS):
        if i % 2 == 0:
            yield image[: rng.randrange(len(image))]
        else:
            flipped = bytearray(image)
            flipped[rng.randrange(len(image))] ^= 1 << rng.randrange(8)
            yield bytes(flipped)


def test_fuzz_loaders(files, tmp_path):
    from spinquant.export.runtime import PteModel, RuntimeLoadError

    model = files["model"]
    ids = torch.tensor([[1, 2, 3, 4]])

    def rotation(path):
        return load_rotations(path, model)[:2]

    def checkpoint(path):
        m = load_quantized(path)[0]
        with torch.no_grad():
            return m(ids)

    def program(path):
        p = PteModel(path)
        try:
            return p.forward(ids, torch.arange(4))
        finally:
            p.close()

    counts = {}
    for name, load, errors in [
        ("rot", rotation, (IncompatibleFileError,)),
        ("ckpt", checkpoint, (IncompatibleFileError,)),
        ("pte", program, (RuntimeLoadError,)),
    ]:
        original = load(files[name])
        image = files[name].read_bytes()
        tally = {"refused": 0, "identical": 0}
        for i, mutant in enumerate(mutations(image, seed=len(counts))):
            path = tmp_path / f"{name}-{i}{files[name].suffix}"
            path.write_bytes(mutant)
            try:
                result = load(path)
            except errors:
                tally["refused"] += 1
                continue
            pairs = zip(result, original, strict=True) if name == "rot" else [(result, original)]
            assert all(torch.equal(a, b) for a, b in pairs), f"{name} mutation {i} loaded differently"
            tally["identical"] += 1
        counts[name] = tally
    print("fuzz", counts)
    assert all(t["refused"] + t["identical"] == MUTATIONS for t in counts.values())
