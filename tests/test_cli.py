"""The command line end to end on a tiny random Llama that uses the real SmolLM2 tokenizer and wiki text."""

import json

import pytest

from spinquant.cli import main


def test_optimize_eval_quantize(tiny_folder, tmp_path, capsys):
    rot = tmp_path / "rot.safetensors"
    main(["optimize", "--model", str(tiny_folder), "--steps", "3", "--seq-len", "32", "--out", str(rot)])
    assert rot.is_file()
    common = ["--model", str(tiny_folder), "--ppl-windows", "2", "--ppl-seq-len", "32"]
    capsys.readouterr()
    main(["eval", *common, "--rotation", str(rot), "--zeroshot-limit", "3", "--tasks", "arc_easy,piqa"])
    result = json.loads(capsys.readouterr().out)
    assert set(result["perplexity"]) == {"wiki", "c4"} and set(result["zeroshot"]["tasks"]) == {"arc_easy", "piqa"}
    wiki = result["perplexity"]["wiki"]
    assert wiki["windows"] == 2 and wiki["tokens"] == 64 and wiki["ci95"][0] <= wiki["ppl"] <= wiki["ci95"][1]
    assert result["zeroshot"]["tasks"]["piqa"]["n"] == 3
    ckpt = tmp_path / "q.safetensors"
    main(
        [
            "quantize",
            "--model",
            str(tiny_folder),
            "--rotation",
            str(rot),
            "--w-method",
            "gptq",
            "--gptq-samples",
            "4",
            "--gptq-seq-len",
            "32",
            "--out",
            str(ckpt),
        ]
    )
    capsys.readouterr()
    main(["eval", *common, "--checkpoint", str(ckpt)])
    assert json.loads(capsys.readouterr().out)["perplexity"]["c4"]["ppl"] > 1


def test_eval_scores_the_users_own_text_with_a_recipe(tiny_folder, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("A sentence of my own, repeated. " * 40, encoding="utf-8")
    common = ["eval", "--model", str(tiny_folder), "--recipe", "device", "--precision", "W4A8KV8", "--w-method", "rtn"]
    main([*common, "--text", str(text), "--ppl-windows", "0", "--ppl-seq-len", "64"])
    result = json.loads(capsys.readouterr().out)
    own = result["perplexity"]["text"]
    assert "g32 rtn+clip" in result["config"] and own["windows"] >= 4 and own["tokens"] == 64 * own["windows"]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for extra, message in (
        (["--text", str(empty)], "is empty"),
        (["--text", str(tmp_path / "none.txt")], "no such file"),
        (["--text", str(text), "--ppl-seq-len", "4096"], "fewer than one window of 4096"),
        (["--dataset", str(tmp_path / "x.csv")], "not a dataset folder"),
        (["--domains", "wiki,news"], "--domains 'wiki,news': choose from wiki, c4"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*common, *extra])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


def test_clear_errors(tiny_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(tmp_path), "--ppl-windows", "1"])
    assert exit_info.value.code == 2
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_folder), "--w-bits", "9"])
    assert "--w-bits=9" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # checked before the model loads
        main(["eval", "--model", str(tiny_folder), "--zeroshot-limit", "1", "--tasks", "arc_easy,lambada_openai"])
    err = capsys.readouterr().err
    assert "'lambada_openai': its data" in err and "not available offline" in err and err.count("\n") == 1


def ship_rotations(folder, shipped_dir, monkeypatch, had: bool = True) -> None:
    """Learn a short official-recipe rotation (had or no_had) for `folder` into `shipped_dir`, ship it from there."""
    from spinquant.rotation import shipped

    kind = "had" if had else "no_had"
    out = shipped_dir / f"tiny-official-{kind}.safetensors"
    main(
        ["optimize", "--model", str(folder), "--recipe", "official", f"--{kind.replace('_', '-')}"]
        + SHORT
        + ["--out", str(out)]
    )
    monkeypatch.setattr(shipped, "SHIPPED_DIR", shipped_dir)


SHORT = ["--steps", "2", "--batch-size", "1", "--seq-len", "32"]


def test_shipped_rotations_by_name(tiny_folder, tmp_path, monkeypatch, capsys):
    """A shipped rotation lists with its provenance, loads by its short name, and is refused for another model."""
    from spinquant.checkpoint import IncompatibleFileError, load_rotations
    from spinquant.model import tiny_model
    from spinquant.rotation.shipped import shipped_path

    ship_rotations(tiny_folder, tmp_path, monkeypatch)
    capsys.readouterr()
    main(["rotations"])
    listed = capsys.readouterr().out
    assert listed.startswith("tiny-official-had: ") and "recipe official, had, 2 x 1 x 32 tokens" in listed
    assert "spinquant optimize --model" in listed and " UTC" in listed
    main(["eval", "--model", str(tiny_folder), "--rotation", "tiny-official-had", "--ppl-windows", "1"])
    main(["eval", "--model", str(tiny_folder), "--ppl-windows", "1", "--ppl-seq-len", "32", "--zeroshot-limit", "-1"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_folder), "--rotation", "tiny-official-nope"])
    assert "no such file; shipped rotations: tiny-official-had" in capsys.readouterr().err
    with pytest.raises(IncompatibleFileError, match="was made for model"):
        load_rotations(shipped_path("tiny-official-had"), tiny_model(seed=1))


def test_source_commit_only_for_tracked_code(tmp_path):
    """A rotation file records the commit of code a checkout tracks; an untracked copy (an install) records None."""
    import subprocess

    from spinquant.cli import source_commit

    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    code = tmp_path / "cli.py"
    code.write_text("x = 1\n")
    assert source_commit(code) is None
    subprocess.run([*git, "add", "cli.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert source_commit(code) == head
    code.write_text("x = 2\n")
    assert source_commit(code) == f"{head}-dirty"
    assert source_commit(tmp_path / "elsewhere" / "cli.py") is None


def test_pipeline_writes_the_table(tiny_folder, tmp_path, monkeypatch):
    ship_rotations(tiny_folder, tmp_path / "shipped", monkeypatch)
    ship_rotations(tiny_folder, tmp_path / "shipped", monkeypatch, had=False)
    out = tmp_path / "run"
    main(
        [
            "pipeline",
            "--model",
            str(tiny_folder),
            "--out-dir",
            str(out),
            "--steps",
            "2",
            "--train-seq-len",
            "32",
            "--ppl-windows",
            "2",
            "--ppl-seq-len",
            "32",
            "--zeroshot-limit",
            "2",
            "--zeroshot-tasks",
            "arc_easy",
            "--quarot-seeds",
            "2",
            "--precisions",
            "W4A4KV4",
            "--gptq",
            "none,quarot,no_had,had,shipped,shipped_no_had",
            "--rtn",
            "had",
            "--device-precisions",
            "W4A8KV8,W4A4KV4",
            "--device-methods",
            "quarot,had",
            "--gptq-samples",
            "4",
            "--gptq-seq-len",
            "32",
            "--bench-variants",
            "",
        ]
    )
    table = (out / "results.md").read_text()
    for method in ("fp32", "no rotation", "QuaRot (2 seeds)", "SpinQuant no_had", "SpinQuant had"):
        assert f"| {method} |" in table
    for precision in ("W4A8KV8", "W4A4KV4"):  # one GPTQ model a rotation, scored at both
        assert f"| device | {precision} | gptq | SpinQuant had |" in table
        assert f"| device | {precision} | gptq | QuaRot (2 seeds) |" in table
        assert f"device {precision} gptq: had vs QuaRot's best seed (" in table
    assert "±" in table  # QuaRot over two seeds: mean ± std
    assert "official W4A4KV4 gptq: had vs QuaRot" in table and "SpinQuant had: GPTQ vs RTN" in table
    assert "| SpinQuant had, shipped |" in table and "gptq: shipped vs had (this job)" in table
    assert "| SpinQuant no_had, shipped |" in table and "gptq: shipped no_had vs no_had (this job)" in table
    assert "gptq: shipped vs shipped no_had" in table and "gptq: had vs no_had (this job)" in table
    assert "gptq: shipped vs QuaRot's best seed (" in table and "gptq: had vs QuaRot's best seed (" in table
    results = json.loads((out / "results.json").read_text())
    assert set(results["seconds"]) >= {"rotation learning", "weights gptq", "perplexity", "zero-shot"}
    assert results["rotations"]["had"]["grad_clip"] == 1.0  # the official trainer's max_grad_norm
    assert results["rotations"]["shipped"]["name"] == "tiny-official-had"
    assert results["rotations"]["shipped_no_had"]["name"] == "tiny-official-no_had"
    scored = [r for r in results["rows"] if r["zeroshot"]]
    assert len(scored) == 3 and all(len(r["perplexity"]["wiki"]) == 1 for r in scored)  # never a mean over seeds
    assert (out / "outliers.png").stat().st_size > 0
    assert sorted(p.name for p in out.glob("rotations-*")) == [
        "rotations-official-had.safetensors",
        "rotations-official-no_had.safetensors",
    ]


def test_spinquant_export(tiny_folder, tmp_path, capsys):
    """`spinquant-export` from a model folder and from an int4 checkpoint; both programs carry the tokenizer."""
    from transformers import AutoTokenizer

    from spinquant.cli import export_main
    from spinquant.export.runtime import PteModel

    export_main(
        [
            "--model",
            str(tiny_folder),
            "--mode",
            "W4A8",
            "--no-had",
            "--max-seq-len",
            "64",
            "-o",
            str(tmp_path / "m.pte"),
        ]
    )
    assert "with its tokenizer" in capsys.readouterr().out
    meta = PteModel(tmp_path / "m.pte").metadata
    assert meta["had"] is False and meta["quant"]["a_bits"] == 8 and meta["tokenizer"]["packed"] is True
    ckpt = tmp_path / "q.safetensors"
    main(["quantize", "--model", str(tiny_folder), "--precision", "W4A4KV4", "--out", str(ckpt)])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        export_main(["--checkpoint", str(ckpt), "--no-had", "-o", str(tmp_path / "c.pte")])
    assert "was made with had=True; drop --no-had" in capsys.readouterr().err
    export_main(
        [
            "--checkpoint",
            str(ckpt),
            "--tokenizer",
            str(tiny_folder),
            "--max-seq-len",
            "64",
            "-o",
            str(tmp_path / "c.pte"),
        ]
    )
    pte = PteModel(tmp_path / "c.pte")
    assert pte.metadata["had"] is True and pte.metadata["quant"]["kv_bits"] == 4
    hf = AutoTokenizer.from_pretrained(str(tiny_folder))
    assert pte.tokenizer().encode("Hello there, 'twas") == hf.encode("Hello there, 'twas")
    with pytest.raises(SystemExit):
        export_main(["--model", str(tiny_folder), "-o", str(tmp_path / "m.bin")])
    assert "should end in .pte" in capsys.readouterr().err
    assert not (tmp_path / "m.bin").exists()
