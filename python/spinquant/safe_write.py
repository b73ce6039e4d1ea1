"""Writing artifacts without destroying anything the user has.

Before the work: `check_output(path, kind, inputs)` refuses an output that is a folder, a FIFO or device, one
of the command's own inputs, or an existing file of another kind, and proves the folder writable by creating
(and removing) a temp file there. After the work: `write_atomic(path, data)` writes a temp file beside the target
and renames it over the target, so a reader never sees half a file.

Temp files have one recognisable name, `.NAME.PID.partial`; every exit path this process controls removes its
own, and the next write to NAME removes those whose process is gone (killed mid-write), saying so on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".partial"

# Kinds of artifact, told apart by their contents (`artifact_kind`).
ROTATION = "rotation file"
CHECKPOINT = "int4 checkpoint"
PROGRAM = "ExecuTorch program"
KINDS_BY_FORMAT = {"spinquant-rotations-v1": ROTATION, "spinquant-int4-v1": CHECKPOINT}


class OutputError(ValueError):
    """An output path that would destroy something or cannot be written."""


def temp_path(path: Path) -> Path:
    """This process's temp file for `path`: `.NAME.PID.partial` in the same folder."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temp files of `path` left by processes that no longer run; returns them."""
    removed = []
    prefix = f".{path.name}."
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            pid = entry.name[len(prefix) : -len(TEMP_SUFFIX)]
            ours = entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX) and pid.isdigit()
            if ours and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                entry.unlink(missing_ok=True)
                removed.append(entry)
                print(f"spinquant: removed {entry}, left by an interrupted write", file=sys.stderr)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; on success it replaces `path`, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a normal artifact, whatever the writer's mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Write `data` to `path` through a temp file and a rename (fsync'd first: no empty file after a crash)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def artifact_kind(path: Path) -> str | None:
    """ROTATION, CHECKPOINT, PROGRAM, or None for any other file (also damaged ones), from the first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) == 8 and head[4:6] == b"ET":  # ExecuTorch's flatbuffer identifier, ET12 ...
                return PROGRAM
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if not 2 <= n <= 100_000_000:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return KINDS_BY_FORMAT.get(meta.get("format")) if isinstance(meta, dict) else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path: str | Path, kind: str, flag: str, inputs: dict[str, str | Path | None] | None = None) -> None:
    """Refuse `path` (given as `flag`) before any work if writing a `kind` there could destroy something."""
    path = Path(path)
    for in_flag, source in (inputs or {}).items():
        if source is not None and _same_file(path, Path(source)):
            raise OutputError(f"{flag} {path} is also the input {in_flag}: write the result to another path")
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder: give a file path inside it")
    if path.exists() or path.is_symlink():
        mode = path.stat().st_mode if path.exists() else 0
        if not stat.S_ISREG(mode):
            raise OutputError(f"{flag} {path} exists and is not a regular file (a FIFO, device or broken link)")
        found = artifact_kind(path)
        if path.stat().st_size and found != kind:
            raise OutputError(
                f"{flag} {path} exists and holds another kind of file ({found or 'not spinquant'}, not a {kind}): "
                "remove it or choose another path"
            )
    check_writable(path, flag)


def check_writable(path: Path, flag: str) -> None:
    """Create the folder if needed and a temp file in it, or say why not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        tmp = temp_path(path)
        tmp.touch()
        tmp.unlink()
    except OSError as err:
        raise OutputError(f"{flag} {path}: cannot write in {path.parent} ({err.strerror or err})") from err
