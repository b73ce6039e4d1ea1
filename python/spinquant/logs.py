"""Filters for third-party log lines that do not apply to spinquant's CPU-only use of torchao and ExecuTorch.

torchao logs a warning for each of its CUDA kernel libraries it cannot load on a machine without CUDA, and torch
logs a deprecation addressed to torchao's own code (an Enum registered as a pytree constant) when torchao is
imported. Both appear whenever ExecuTorch's export imports torchao. Only these messages are dropped: every other
record of those loggers passes.
"""

from __future__ import annotations

import logging
import re

DROPPED = {
    "torchao": re.compile(r"Failed to load .*/torchao/_C_(mxfp8|cutlass)\w*\."),
    "torch.utils._pytree": re.compile(r"is an Enum subclass and is now natively supported"),
}


class _DropMatching(logging.Filter):
    """Drops the records whose message matches `pattern`."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def drop_inapplicable_messages() -> None:
    """Install the filters on the named loggers (once; importing neither library)."""
    for name, pattern in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
