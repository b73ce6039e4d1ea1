"""Device bundles (`spinquant-export --bundle`): the Linux arm64 one, unpacked in an empty folder, runs under qemu
with nothing else on the library path and prints the text `spinquant run` prints; clear errors when the device
build is missing; the macOS arm64 one (cross-linked by `run.sh test`) holds Mach-O arm64 files only."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("executorch")

from native_build import ROOT, arm64_tools, build_runner  # noqa: E402
from spinquant.cli import export_main  # noqa: E402
from spinquant.export.bundle import BundleError, find_build, write_bundle  # noqa: E402
from spinquant.export.runtime import PteModel  # noqa: E402

PROMPT = "The capital of France is"
NEW = 6


def _export(folder: Path, out: Path, *extra: str) -> None:
    export_main(["--model", str(folder), "--mode", "W4A8", "--max-seq-len", "32", "-o", str(out), *extra])


def _bundle_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@arm64_tools
def test_linux_arm64_bundle_runs_alone_under_qemu(tiny_folder, tmp_path, capsys):
    build_dir = build_runner(arm64=True).parents[1]
    tarball = tmp_path / "out" / "tiny-arm64.tar.gz"
    _export(tiny_folder, tmp_path / "tiny.pte", "--target", "arm64", "--bundle", str(tarball),
            "--runner-dir", str(build_dir))  # fmt: skip
    assert f"wrote {tarball}" in capsys.readouterr().out

    device = tmp_path / "device"  # an empty folder, as on the board
    device.mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(device, filter="data")
    bundle = device / "tiny-arm64"
    assert {"tiny.pte", "spinquant_runner", "libspinquant_et_ops.so", "libexecutorch.so", "run.sh",
            "README.txt"} <= _bundle_files(bundle)  # fmt: skip
    assert len((bundle / "README.txt").read_text().splitlines()) == 3

    # what `spinquant run` prints: the prompt and the greedy text, decoded by the program's own tokenizer
    pte = PteModel(bundle / "tiny.pte", check_target=False)
    want = PROMPT + pte.generate(pte.tokenizer(), PROMPT, NEW) + "\n"
    env = {"PATH": "/usr/bin:/bin", "SPINQUANT_LAUNCHER": "qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max"}
    res = subprocess.run(["sh", "run.sh", "--prompt", PROMPT, "--max-new", str(NEW), "--threads", "2"],
                         cwd=bundle, env=env, capture_output=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert res.stdout.decode() == want
    with capsys.disabled():  # evidence in the CI log
        print(f"\nlinux-arm64 bundle {sorted(_bundle_files(bundle))} ran alone under qemu: {want!r}")

    # the libraries come from the bundle alone: without the ExecuTorch runtime the runner cannot start
    (bundle / "libexecutorch.so").unlink()
    res = subprocess.run(["sh", "run.sh", "--prompt", PROMPT], cwd=bundle, env=env, capture_output=True)
    assert res.returncode != 0 and b"libexecutorch.so" in res.stderr


def test_missing_device_build_fails_before_export(tiny_folder, tmp_path):
    with pytest.raises(SystemExit, match=r"no linux-arm64 spinquant_runner in .*nothing/export: build it with "
                       r"`bash run.sh device linux-arm64`"):  # fmt: skip
        _export(tiny_folder, tmp_path / "m.pte", "--target", "arm64", "--bundle", str(tmp_path / "b"),
                "--runner-dir", str(tmp_path / "nothing"))  # fmt: skip
    assert not (tmp_path / "m.pte").exists()


def test_build_for_another_platform_is_refused(tmp_path):
    """A folder whose runner is an x86_64 binary is no linux-arm64 build."""
    (tmp_path / "export").mkdir()
    shutil.copy(shutil.which("ls") or "/bin/ls", tmp_path / "export" / "spinquant_runner")
    (tmp_path / "export" / "libspinquant_et_ops.so").write_bytes(b"")
    with pytest.raises(BundleError, match="spinquant_runner is not a linux-arm64 binary"):
        find_build("linux-arm64", tmp_path)


MACOS = ROOT / "build" / "device-macos-arm64"


@pytest.mark.skipif(not (MACOS / "export" / "spinquant_runner").is_file(), reason="`run.sh device macos-arm64` not run")
def test_macos_bundle_holds_the_linked_dylibs(tmp_path):
    build = find_build("macos-arm64", MACOS)
    pte = tmp_path / "m.pte"
    pte.write_bytes(b"program")  # the bundle copies it as it is
    folder = write_bundle(build, pte, tmp_path / "mac")
    files = _bundle_files(folder)
    # the runner links the runtime, the CPU kernels, XNNPACK and its thread pool (export/CMakeLists.txt)
    libs = {f"libexecutorch{n}.dylib" for n in ("", "_threadpool", "_kernels_optimized", "_backend_xnnpack")}
    assert {"spinquant_runner", "libspinquant_et_ops.dylib", "m.pte", *libs} <= files
    assert not any(n.endswith(".so") for n in files) and "DYLD_LIBRARY_PATH" in (folder / "run.sh").read_text()
    assert os.access(folder / "run.sh", os.X_OK)
    with pytest.raises(BundleError, match="exists and is not empty"):
        write_bundle(build, pte, folder)
