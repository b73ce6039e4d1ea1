"""Device bundle (`spinquant-export ... --bundle DIR`): one folder to copy to a board, phone or Mac, holding the
program, `spinquant_runner`, our op library, the ExecuTorch libraries they link, `run.sh` and a short README.

The runner and op library come from a CMake build folder for the device (`bash run.sh device PLATFORM` makes
`build/device-PLATFORM`; docs/DEVICES.md); the ExecuTorch libraries from the wheel that build linked
(`SPINQUANT_ET_RUNTIME` in its CMakeCache.txt). ELF binaries get `$ORIGIN` as their only library path, so the
bundle depends on nothing outside it but the system's C and C++ libraries; Mach-O ones were linked with
`@loader_path` first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .exporter import host_target

RUNNER = "spinquant_runner"
OPS = "libspinquant_et_ops"
# platform -> (shared library suffix, the start of a binary for it: ELF header up to e_machine, or Mach-O header)
PLATFORMS = {
    "linux-arm64": (".so", b"\x7fELF\x02\x01", 0xB7),
    "linux-x86_64": (".so", b"\x7fELF\x02\x01", 0x3E),
    "macos-arm64": (".dylib", b"\xcf\xfa\xed\xfe", 0x0100000C),
}
# spinquant-export --target -> bundle platform
TARGET_PLATFORMS = {"arm64": "linux-arm64", "x86_64": "linux-x86_64", "macos-arm64": "macos-arm64"}


class BundleError(RuntimeError):
    """A bundle cannot be made; the message names what is missing and how to get it."""


@dataclass
class DeviceBuild:
    """The parts of a device build that go into a bundle."""

    platform: str
    runner: Path
    ops: Path
    et_libdir: Path


def _arch_matches(path: Path, platform: str) -> bool:
    """Whether the binary at `path` is for `platform` (its header's magic and machine / CPU type)."""
    _, magic, machine = PLATFORMS[platform]
    head = path.read_bytes()[:20]
    if not head.startswith(magic):
        return False
    if magic.startswith(b"\x7fELF"):
        return int.from_bytes(head[18:20], "little") == machine
    return int.from_bytes(head[4:8], "little") == machine


def default_build_dir(platform: str) -> Path:
    return Path("build") / f"device-{platform}"


def find_build(platform: str, build_dir: str | Path | None = None) -> DeviceBuild:
    """The runner, op library and ExecuTorch lib folder of the CMake build for `platform`; BundleError if absent."""
    if platform not in PLATFORMS:
        raise BundleError(f"unknown bundle platform {platform!r}: use one of {', '.join(PLATFORMS)}")
    suffix = PLATFORMS[platform][0]
    folder = Path(build_dir) if build_dir else default_build_dir(platform)
    how = f"build it with `bash run.sh device {platform}` (docs/DEVICES.md) or pass --runner-dir"
    runner, ops = folder / "export" / RUNNER, folder / "export" / f"{OPS}{suffix}"
    for part in (runner, ops):
        if not part.is_file():
            raise BundleError(f"no {platform} {part.name} in {folder}/export: {how}")
    if not _arch_matches(runner, platform):
        raise BundleError(f"{runner} is not a {platform} binary: {how}")
    cache = (folder / "CMakeCache.txt").read_text() if (folder / "CMakeCache.txt").is_file() else ""
    found = re.search(r"^SPINQUANT_ET_RUNTIME:FILEPATH=(.+)$", cache, re.M)
    if not found or not Path(found.group(1)).is_file():
        raise BundleError(f"{folder}/CMakeCache.txt names no existing executorch runtime library: {how}")
    return DeviceBuild(platform, runner, ops, Path(found.group(1)).parent)


def find_build_for_target(target: str | None, build_dir: str | Path | None = None) -> DeviceBuild:
    """find_build for a `spinquant-export --target` (default: this machine)."""
    if target is None:
        target = "macos-arm64" if sys.platform == "darwin" else host_target()
    return find_build(TARGET_PLATFORMS[target], build_dir)


def _linked_libraries(binaries: list[Path], libdir: Path, suffix: str) -> list[Path]:
    """The libraries of `libdir` the binaries load, directly or through each other (names in their load tables)."""
    available = {p.name: p for p in sorted(libdir.glob(f"lib*{suffix}"))}
    found: dict[str, Path] = {}
    todo = list(binaries)
    while todo:
        data = todo.pop().read_bytes()
        for name, path in available.items():
            # An ELF DT_NEEDED entry is a NUL-delimited string; a Mach-O load command names @rpath/NAME.
            if name not in found and re.search(rb"[\0/]" + re.escape(name.encode()) + rb"\0", data):
                found[name] = path
                todo.append(path)
    return [found[n] for n in sorted(found)]


_SET_RPATH = 'file(RPATH_SET FILE "${BINARY}" NEW_RPATH "$ORIGIN")\n'


def _origin_only(binary: Path) -> None:
    """Make `$ORIGIN` the only library path of an ELF binary (CMake's ELF editor; `$ORIGIN` is never longer)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "set_rpath.cmake"
        script.write_text(_SET_RPATH)
        res = subprocess.run(["cmake", f"-DBINARY={binary}", "-P", str(script)], capture_output=True, text=True)
    if res.returncode != 0:
        raise BundleError(f"cannot set the library path of {binary}: {res.stderr.strip()}")


RUN_SH = """#!/bin/sh
# Runs {pte} with the runner and libraries of this folder: sh run.sh --prompt "TEXT" [--max-new N] [--threads N]
# SPINQUANT_LAUNCHER runs the binary through another program, e.g. "qemu-aarch64 -L /usr/aarch64-linux-gnu".
here=$(cd "$(dirname "$0")" && pwd)
export {libvar}="$here${{{libvar}:+:${libvar}}}"
exec $SPINQUANT_LAUNCHER "$here/{runner}" "$here/{pte}" "$@"
"""

README = """spinquant program {pte} for {platform}, with spinquant_runner and the ExecuTorch libraries it needs.
Run it: sh run.sh --prompt "The capital of France is" --max-new 32   (also --threads N, --temperature T, --seed S).
Nothing else is needed on the device but its C and C++ runtime; built and tested as docs/DEVICES.md says.
"""


def write_bundle(build: DeviceBuild, pte: str | Path, dest: str | Path) -> Path:
    """Write the bundle for `pte` to folder `dest` (a `.tar.gz` path: a tarball of that folder); returns it."""
    pte, dest = Path(pte), Path(dest)
    tarball = dest.name.endswith(".tar.gz")
    folder = dest.with_name(dest.name.removesuffix(".tar.gz")) if tarball else dest
    if folder.exists() and any(folder.iterdir()):
        raise BundleError(f"bundle folder {folder} exists and is not empty: remove it or pick another")
    folder.mkdir(parents=True, exist_ok=True)
    macos = build.platform.startswith("macos")
    for part in [build.runner, build.ops]:
        shutil.copy2(part, folder / part.name)
        if not macos:  # its build path names this machine's folders
            _origin_only(folder / part.name)
    for lib in _linked_libraries([build.runner, build.ops], build.et_libdir, PLATFORMS[build.platform][0]):
        shutil.copy2(lib, folder / lib.name)
    shutil.copy2(pte, folder / pte.name)
    libvar = "DYLD_LIBRARY_PATH" if macos else "LD_LIBRARY_PATH"
    (folder / "run.sh").write_text(RUN_SH.format(pte=pte.name, libvar=libvar, runner=RUNNER))
    (folder / "run.sh").chmod(0o755)
    (folder / "README.txt").write_text(README.format(pte=pte.name, platform=build.platform))
    if not tarball:
        return folder
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    shutil.rmtree(folder)
    return dest
