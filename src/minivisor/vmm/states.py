"""The VM state machine: which power operations are legal in which state.

The state itself is observed, never stored on its own: the VMM process and its
runtime record own it (see :mod:`minivisor.vmm.process`). This module only says what
may happen next, so every interface rejects an illegal request the same way.
"""

from __future__ import annotations

from enum import Enum

from ..errors import StateError

__all__ = ["VmState", "Action", "require", "FAULTS"]


class VmState(str, Enum):
    """A VM's power state, named as VMware's ``vmrun`` and the API name it."""

    POWERED_OFF = "poweredOff"
    STARTING = "starting"  # locked by a power-on (or another operation) in progress
    RUNNING = "running"
    PAUSED = "paused"


# QEMU run states in which QEMU paused the guest by itself: the VM shows as paused (with the
# state as its reason) and may be resumed or powered off. The hint says what to do.
FAULTS: dict[str, str] = {
    "io-error": "a disk write found the datastore full; free space there, then resume it (minivisor vm resume "
                "{name}), or power it off (minivisor vm stop {name} --hard)",
}


class Action(str, Enum):
    START = "start"
    STOP = "stop"
    RESET = "reset"
    PAUSE = "pause"
    RESUME = "resume"
    CONSOLE = "console"
    EXEC = "exec"
    UNREGISTER = "unregister"
    DELETE = "delete"


LEGAL: dict[Action, frozenset[VmState]] = {
    Action.START: frozenset({VmState.POWERED_OFF}),
    Action.STOP: frozenset({VmState.RUNNING, VmState.PAUSED}),
    Action.RESET: frozenset({VmState.RUNNING, VmState.PAUSED}),
    Action.PAUSE: frozenset({VmState.RUNNING}),
    Action.RESUME: frozenset({VmState.PAUSED}),
    Action.CONSOLE: frozenset({VmState.RUNNING, VmState.PAUSED}),
    Action.EXEC: frozenset({VmState.RUNNING}),
    Action.UNREGISTER: frozenset({VmState.POWERED_OFF}),
    Action.DELETE: frozenset({VmState.POWERED_OFF}),
}

HINTS: dict[Action, str] = {
    Action.START: "stop it first: minivisor vm stop {name}",
    Action.PAUSE: "only a running VM can be paused",
    Action.RESUME: "only a paused VM can be resumed",
    Action.EXEC: "start or resume it first: minivisor vm start {name}",
    Action.UNREGISTER: "power it off first: minivisor vm stop {name}",
    Action.DELETE: "power it off first: minivisor vm stop {name}",
}


def require(name: str, state: VmState, action: Action) -> None:
    """Raise StateError unless ``action`` is legal for a VM in ``state``."""
    if state in LEGAL[action]:
        return
    hint = HINTS.get(action, "power it on first: minivisor vm start {name}").format(name=name)
    if state is VmState.STARTING:
        hint = "another operation on it is in progress; retry when it has finished"
    error = StateError(f"cannot {action.value} VM {name!r}: it is {state.value}", hint=hint)
    error.code = f"invalid-state-{action.value}"
    raise error
