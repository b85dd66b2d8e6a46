"""``vm check``: what minivisor would make of any specfile, key by key, without a datastore.

The verdicts come from the code power-on runs (:func:`minivisor.vmm.plan.check_specfile`):
the spec reader's notes, the host checks and the file resolution, so ``vm check`` and
``vm start`` cannot disagree about a device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import PathError, SpecError
from ..spec.fidelity import VERDICTS, key_verdicts
from ..text import excerpt
from ..vmm.plan import HostNetworks, check_specfile

__all__ = ["check_vmx", "refuse_template_file"]


def check_vmx(vmx: Path | str, networks: HostNetworks | None = None) -> dict[str, Any]:
    """Every key of the specfile with its verdict (virtualized, approximated, disconnected, ignored,
    refused) and why; whether it powers on; the warnings power-on would print. Nothing is written.
    ``networks``: a datastore's, to say which NICs would find no network (else NICs are not judged)."""
    path = Path(vmx)
    if path.suffix.lower() not in (".vmx", ".vmtx"):  # its keys and values are echoed: never any other file's
        raise PathError(f"{excerpt(str(vmx))} is not a specfile (.vmx)", hint="name a .vmx file")
    if not path.is_file():
        raise PathError(f"{vmx} is not a file", hint="name a .vmx file")
    refuse_template_file(path)
    doc, spec, notes = check_specfile(path, networks)
    keys = key_verdicts(doc.items(), notes, spec.unused_keys, spec.unread_device_keys)
    counts = {verdict: sum(1 for k in keys if k.verdict == verdict) for verdict in VERDICTS}
    warnings = [n.warning for n in notes if n.warns]
    warnings += [w for w in spec.warnings if w not in warnings]  # those no note carries (NIC models)
    return {"vmx": str(path), "powers_on": counts["refused"] == 0, "counts": counts,
            "keys": [k.to_dict() for k in keys], "warnings": warnings,
            "problems": [str(problem) for problem in doc.problems]}


def refuse_template_file(path: Path) -> None:
    """ESXi keeps templates in ``.vmtx`` files: a template is never powered on."""
    if path.suffix.lower() == ".vmtx":
        raise SpecError(f"{path.name} is a VM template (.vmtx), which is never powered on",
                        hint="deploy a VM from the template in vSphere, then use that VM's .vmx")
