"""A new top layer on a checked image, in the format that keeps the disk's own: a snapshot's or a linked
clone's delta.

A VMDK's delta is a VMDK (``web-000001.vmdk`` with its ``parentFileNameHint``), so
the folder still opens in VMware; any other disk's is a qcow2 (a raw file cannot
have a backing file).
"""

from __future__ import annotations

from pathlib import Path

from . import qcow2, vmdk
from .layers import ImageLayer

__all__ = ["delta_format", "create_delta"]


def delta_format(backing_format: str) -> str:
    """The format of a delta on a layer of ``backing_format``."""
    return "vmdk" if backing_format == "vmdk" else "qcow2"


def create_delta(path: Path, backing: ImageLayer, *, relative_to: Path | None = None) -> None:
    """A new, empty delta on ``backing`` (its format from ``path``'s name, which must match the backing's)."""
    if delta_format(backing.format) == "vmdk":
        vmdk.create_delta(path, backing, relative_to=relative_to)
    else:
        qcow2.create_overlay(path, backing, relative_to=relative_to)
