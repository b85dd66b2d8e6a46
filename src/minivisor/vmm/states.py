"""The VM state machine: every action minivisor takes on a VM, and the states it is legal in.

The state itself is observed, never stored on its own: the VMM process, its
runtime record and QEMU's run state (as the console relay last saw it) own it
(see :mod:`minivisor.vmm.process`). This module only says what may happen
next, in one table, so every interface refuses an illegal request the same way:
a :class:`~minivisor.errors.StateError` naming the state and the actions legal in it.
"""

from __future__ import annotations

from enum import Enum

from ..errors import StateError

__all__ = ["VmState", "Action", "LEGAL", "FAULTS", "require", "legal_actions"]


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
    """What minivisor can do to a VM (reading it is legal in every state and is not listed)."""

    START = "start"
    STOP = "stop"
    RESET = "reset"
    PAUSE = "pause"
    RESUME = "resume"
    CONSOLE = "console"
    EXEC = "exec"
    UNREGISTER = "unregister"
    DELETE = "delete"
    SNAPSHOT = "snapshot"
    REVERT = "revert"
    DELETE_SNAPSHOT = "delete a snapshot of"
    CLONE = "clone"
    RESIZE_DISK = "resize a disk of"
    RECOVER = "recover an interrupted operation on"
    NIC = "change a NIC of"
    RESET_NVRAM = "reset the UEFI variables of"
    CDROM = "change the CD-ROM medium of"
    EDIT_SPECFILE = "edit the specfile of"
    MIGRATE = "migrate"
    REPLICATE = "replicate"


_OFF = frozenset({VmState.POWERED_OFF})
_ON = frozenset({VmState.RUNNING, VmState.PAUSED})
_ANY_SETTLED = _OFF | _ON  # STARTING is never legal: another operation holds the VM

LEGAL: dict[Action, frozenset[VmState]] = {
    Action.START: _OFF,
    Action.STOP: _ON,
    Action.RESET: _ON,
    Action.PAUSE: frozenset({VmState.RUNNING}),
    Action.RESUME: frozenset({VmState.PAUSED}),
    Action.CONSOLE: _ON,
    Action.EXEC: frozenset({VmState.RUNNING}),
    Action.UNREGISTER: _OFF,
    Action.DELETE: _OFF,
    Action.SNAPSHOT: _ANY_SETTLED,  # powered off: disks only; running or paused: memory too
    Action.REVERT: _ANY_SETTLED,  # a running VM's current state is discarded, like VMware's revert
    Action.DELETE_SNAPSHOT: _ANY_SETTLED,  # a running VMM merges the layers it has open itself
    Action.CLONE: _ANY_SETTLED,  # a running VM is cloned from a snapshot taken for the purpose
    Action.RESIZE_DISK: _ANY_SETTLED,  # a running VMM grows the disk and the guest sees it
    Action.RECOVER: _ANY_SETTLED,  # finish or undo what a killed process left in the VM's journal
    Action.NIC: _ANY_SETTLED,  # running: its link at once (QMP); off: at its next power-on
    Action.RESET_NVRAM: _OFF,  # the running firmware has its variable store open
    Action.CDROM: _ANY_SETTLED,  # running: the tray opens and closes (QMP); off: the next power-on's medium
    Action.MIGRATE: _ON,  # its memory and disks move while it runs (or stays paused)
    Action.REPLICATE: _ANY_SETTLED,  # a round copies from its running VMM, or a storage daemon's if it is off
    Action.EDIT_SPECFILE: _OFF,  # as on VMware: a running VMM was built from the file and would not follow it
}

def legal_actions(state: VmState) -> tuple[Action, ...]:
    """The actions legal in ``state``, in the table's order."""
    return tuple(action for action, states in LEGAL.items() if state in states)


def require(name: str, state: VmState, action: Action) -> None:
    """Raise StateError unless ``action`` is legal for a VM in ``state``."""
    if state in LEGAL[action]:
        return
    legal = legal_actions(state)
    now = ", ".join(a.value for a in legal) if legal else "nothing until it has finished"
    raise StateError(f"cannot {action.value} VM {name!r}: it is {state.value} (possible now: {now})",
                     hint=_hint(action, state, name), vm=name, state=state.value, action=action.value,
                     legal=tuple(a.value for a in legal))


def _hint(action: Action, state: VmState, name: str) -> str:
    if state is VmState.STARTING:
        return "another operation on it is in progress; retry when it has finished"
    if state is VmState.POWERED_OFF:
        return f"power it on first: minivisor vm start {name}"
    if LEGAL[action] == _OFF:
        return f"power it off first: minivisor vm stop {name}"
    if action in (Action.PAUSE, Action.RESUME):
        return f"it is {state.value} already"
    return f"resume it first: minivisor vm resume {name}"
