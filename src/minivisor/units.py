"""Sizes as people write them and read them: ``20G`` in, ``1.5 GiB`` out (powers of 1024)."""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import ArgumentError

__all__ = ["parse_size", "human_size", "ProgressMeter"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``100G``, ``512M``, ``1TiB`` or a byte count -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ArgumentError(f"{text!r} is not a size", hint="write sizes like 512M, 20G or 1T")
    number, unit = float(match.group(1)), match.group(2).upper()
    size = int(number * 1024 ** " KMGTP".index(unit or " "))
    if size < 512:
        raise ArgumentError(f"size {text!r} is smaller than one sector", hint="use at least 1M")
    return size


def human_size(size: int) -> str:
    """``1073741824`` -> ``1 GiB``; ``1610612736`` -> ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    else:
        unit = "PiB"
    return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"


class ProgressMeter:
    """Bytes done -> percent of ``total`` for a progress callback (a long copy's, say)."""

    def __init__(self, total: int, progress: Callable[[float], None] | None) -> None:
        self.total, self.done, self.progress = max(total, 1), 0.0, progress

    def add(self, count: int) -> None:
        self.reach(self.done + count)

    def reach(self, done: float) -> None:
        self.done = done
        if self.progress:
            self.progress(min(100.0, 100.0 * self.done / self.total))
