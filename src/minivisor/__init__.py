"""minivisor: a single-node hosted hypervisor for VMware-style specfiles.

The public Python API::

    from minivisor import Hypervisor
    hv = Hypervisor("./datastore")
    hv.start_vm("web", wait_ready=True)

Names are imported lazily so ``import minivisor`` (and the CLI) stays fast.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing: `minivisor --help` needs nothing of it

__all__ = [
    "Hypervisor", "VmInfo", "StartResult", "Explanation", "ExecResult", "VmState",
    "HvError", "SpecError", "PathError", "NotFoundError", "ConflictError", "StateError", "LockError",
    "DiskError", "HostError", "VmmError", "QmpError", "GuestError", "ImageBuildError", "RequestError",
    "AuthError", "ArgumentError", "NoSpaceError",
]
__version__ = "0.1.0"

_HOMES = {"Hypervisor": "core.hypervisor", "VmInfo": "core.results", "StartResult": "core.results",
          "Explanation": "core.results", "ExecResult": "vmm.console", "VmState": "vmm.states"}

if TYPE_CHECKING:
    from typing import Any

    from .core.hypervisor import Hypervisor
    from .core.results import Explanation, StartResult, VmInfo
    from .vmm.console import ExecResult
    from .vmm.states import VmState


def __getattr__(name: str) -> Any:
    from importlib import import_module

    module = _HOMES.get(name, "errors" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module 'minivisor' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
