"""VMs that boot the test guest, created the way a user would: the image's folder allowed first."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def create_guest(hv: Any, name: str, image: Path, **options: Any) -> Any:
    """``hv.create_vm(name, boot_disk=image, ...)`` after allowing the image's folder (the path rule asks it)."""
    hv.allow_path(image.parent)
    return hv.create_vm(name, boot_disk=image, **options)
