"""Payload checksums of spinquant's artifacts (docs/RELIABILITY.md).

An artifact records `"xxh64:<16 hex digits>"` inside itself: in the safetensors metadata (`checksum`) of rotation
files and int4 checkpoints, in the JSON of a program's `spinquant_metadata` method. The checksum is XXH64 of the
whole file with those 16 digits read as '0' (kernels/include/spinquant/checksum.h, the same C++ code the
ExecuTorch runner verifies programs with), so a writer serializes with the placeholder, hashes, and patches the
digits in; a reader verifies the raw bytes before parsing any of them. Any changed byte is caught.
"""

from __future__ import annotations

TAG = "xxh64:"
DIGITS = 16
PLACEHOLDER = TAG + "0" * DIGITS
VERIFIED, UNRECORDED, MISMATCH = 0, 1, 2  # spinquant::Integrity


class IntegrityError(ValueError):
    """A file whose recorded checksum does not match its contents: damaged on disk or in transit."""


def stamp(image: bytearray) -> str:
    """Patch the checksum into a serialized artifact holding `"PLACEHOLDER"` exactly once; returns it."""
    from ._kernels import artifact_checksum

    needle = f'"{PLACEHOLDER}"'.encode()
    at = image.find(needle)
    if at < 0 or image.find(needle, at + 1) >= 0 or image.find(f'"{TAG}'.encode()) != at:
        raise RuntimeError("a serialized artifact must hold the checksum placeholder once, before any other tag")
    hole = at + 1 + len(TAG)
    image[hole : hole + DIGITS] = f"{artifact_checksum(image, hole):016x}".encode()
    return image[at + 1 : hole + DIGITS].decode()


def verify(image, path, recorded: bool) -> None:
    """Raise IntegrityError if `image` (bytes, mmap) is damaged; `recorded`: its metadata names a checksum, so
    a file without one is damaged too (its record was hit)."""
    from ._kernels import verify_artifact

    status = verify_artifact(image)
    if status == MISMATCH or (status == UNRECORDED and recorded):
        raise IntegrityError(f"{path} is damaged: its contents do not match its recorded checksum; re-create it")
