"""``vm cdrom``: put an ISO in a VM's CD-ROM drive, or take it out, running or not, as VMware does;
``vm screenshot``: what its screen shows.

The image passes the VM's path policy like any file its specfile names. A running VM's drive
changes at once (its tray opens and closes: the guest sees a new medium); either way the specfile
records it, so the next power-on starts with the same medium.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..datastore.inventory import read_vmx
from ..errors import NoSuchDiskError, StateError
from ..text import excerpt
from ..vmm import jobs
from ..vmm.argv import device_id
from ..vmm.states import Action, require
from .context import VmContext, Vms

__all__ = ["change_cdrom", "screenshot"]


def change_cdrom(vms: Vms, name: str, node: str | None, image: Path | str | None) -> dict[str, str | None]:
    """Insert ``image`` (absolute, or relative to the VM's folder as in a specfile) in the CD-ROM drive ``node``
    (default: the first),
    or eject its medium when ``image`` is None. Returns the drive and what is in it now."""
    with vms.operate(name, Action.CDROM) as ctx:
        drive = _drive(ctx, node)
        path = ctx.scope.image(ctx.vm_dir, os.path.join(ctx.vm_dir, image), f"the image for {drive}") if image else None
        if ctx.running:
            with ctx.vmm.session() as qmp:
                if path is None:
                    jobs.eject_medium(qmp, device_id(drive))
                else:
                    jobs.insert_medium(qmp, device_id(drive), f"cd-{device_id(drive)}-{secrets.token_hex(4)}", path)
        _record(ctx, drive, path)
        ctx.emit("cdromChanged", drive=drive, image=str(path) if path else None)
    return {"drive": drive, "image": str(path) if path else None}


def screenshot(ctx: VmContext) -> bytes:
    """The running VM's screen as PNG. QEMU writes it in the VM's private runtime folder, never where a
    caller names: the caller gets the bytes."""
    require(ctx.name, ctx.vmm.state(), Action.CONSOLE)
    if not ctx.read_spec().display.present:
        raise StateError(f"VM {ctx.name!r} has no display (svga.present = FALSE)",
                         hint='set svga.present = "TRUE" and power it on again')
    target = ctx.paths.runtime_dir / f"screen-{secrets.token_hex(4)}.png"
    try:
        with ctx.vmm.session() as qmp:
            qmp.execute("screendump", {"filename": str(target), "format": "png"})
        return target.read_bytes()
    finally:
        target.unlink(missing_ok=True)


def _drive(ctx: VmContext, node: str | None) -> str:
    drives = [d.node for d in ctx.read_spec().disks if d.kind == "cdrom"]
    wanted = node.lower() if node else (drives[0] if drives else None)
    if wanted not in drives:
        raise NoSuchDiskError(f"VM {ctx.name!r} has no CD-ROM drive {excerpt(node or '')}".rstrip(),
                              hint=f"its CD-ROM drives: {', '.join(drives)}" if drives else
                              "add one to its specfile, e.g. ide1:0.present = \"TRUE\" and "
                              "ide1:0.deviceType = \"cdrom-image\"")
    return wanted


def _record(ctx: VmContext, drive: str, path: Path | None) -> None:
    """The drive's medium in the specfile (relative to the VM folder when it is in it)."""
    doc = read_vmx(ctx.vmx)
    if path is None:
        doc.set(f"{drive}.fileName", "")
    else:
        inside = path.is_relative_to(os.path.realpath(ctx.vm_dir))
        doc.set(f"{drive}.fileName", os.path.relpath(path, os.path.realpath(ctx.vm_dir)) if inside else str(path))
        doc.set(f"{drive}.deviceType", "cdrom-image")
        doc.set(f"{drive}.startConnected", "TRUE")
    doc.save(ctx.vmx)
