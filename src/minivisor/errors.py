"""The one hierarchy of errors minivisor raises to its users.

Every error carries a user-facing ``message`` (what is wrong), a ``hint`` (how to
fix it), a stable kebab-case ``code`` for scripts and the REST API, and an
``exit_code`` the CLI uses. Interfaces map errors in exactly one place each.
"""

from __future__ import annotations

import errno
import os

from .text import clip

__all__ = [
    "HvError",
    "SpecError",
    "PathError",
    "NotFoundError",
    "NoSuchDiskError",
    "ConflictError",
    "StateError",
    "LockError",
    "DiskError",
    "NoHardDiskError",
    "HostError",
    "InsufficientMemoryError",
    "NetworkError",
    "VmmError",
    "QmpError",
    "QmpCommandError",
    "GuestError",
    "GuestTimeoutError",
    "AgentError",
    "AgentCommandError",
    "ImageBuildError",
    "RequestError",
    "AuthError",
    "ArgumentError",
    "NoSpaceError",
    "ClusterError",
    "ClusterUnreachableError",
    "MigrationError",
    "HandoverUncertainError",
    "ReplicaMissingError",
    "OwnedElsewhereError",
    "NoHostFitsError",
    "is_out_of_space",
    "host_refused",
]


class HvError(Exception):
    """Root of every error minivisor reports to a user."""

    code = "hv-error"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        # Echoed values go through text.excerpt(); clipping here bounds any echo that did not.
        message = clip(message)
        super().__init__(message)
        self.message = message
        self.hint = clip(hint) if hint else hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}; {self.hint}"

    def one_line(self) -> str:
        """The message and hint on a single line, as the CLI prints them."""
        return " ".join(str(self).split())

    def details(self) -> dict[str, object]:
        """What a script may want beyond the message, as keyword arguments of the class (JSON-able)."""
        return {}


class SpecError(HvError):
    """The specfile is malformed or asks for hardware that cannot be built; ``line``: the specfile's line (1-based)
    that says so, when the reader knows it (an editor shows the error there)."""

    code = "spec-invalid"
    exit_code = 65

    def __init__(self, message: str, *, hint: str | None = None, line: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.line = line

    def details(self) -> dict[str, object]:
        return {"line": self.line} if self.line else {}


class PathError(SpecError):
    """A path leaves the datastore or names something that may not be used."""

    code = "path-unsafe"


class NotFoundError(HvError):
    """A VM, disk or image that was named does not exist."""

    code = "not-found"
    exit_code = 3


class NoSuchDiskError(NotFoundError):
    """A VM has no hard disk by the name given (``scsi0:1``)."""

    code = "no-such-disk"


class ConflictError(HvError):
    """The request clashes with something that already exists."""

    code = "conflict"
    exit_code = 4


class StateError(HvError):
    """The VM is not in a state where the operation is legal.

    Refused by the state table, it names the VM, its ``state``, the ``action`` asked
    for and the actions ``legal`` in that state.
    """

    code = "invalid-state"
    exit_code = 4

    def __init__(self, message: str, *, hint: str | None = None, vm: str | None = None, state: str | None = None,
                 action: str | None = None, legal: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint=hint)
        self.vm, self.state, self.action, self.legal = vm, state, action, tuple(legal)

    def details(self) -> dict[str, object]:
        if self.action is None:
            return {}
        return {"vm": self.vm, "state": self.state, "action": self.action, "legal": list(self.legal)}


class LockError(StateError):
    """Another process holds the VM (it is running or being changed)."""

    code = "locked"


class DiskError(HvError):
    """A virtual disk is missing, unreadable or not what the specfile says."""

    code = "disk-error"
    exit_code = 66


class NoHardDiskError(DiskError):
    """The VM has no hard disk to snapshot or clone."""

    code = "no-hard-disk"


class HostError(HvError):
    """The host lacks something minivisor needs (a program, memory, a device)."""

    code = "host-error"
    exit_code = 69


class InsufficientMemoryError(HostError):
    """The host cannot hold another VM of this size next to the ones it runs (memory admission)."""

    code = "insufficient-memory"


class NetworkError(HostError):
    """The host could not build or change a virtual network (a bridge, a tap, dnsmasq, nftables)."""

    code = "network-error"


class VmmError(HvError):
    """The VMM process (QEMU) failed to start or died."""

    code = "vmm-failed"
    exit_code = 70


class QmpError(VmmError):
    """No conversation with the VMM's control socket (QMP): gone, hung, or speaking nonsense."""

    code = "qmp-error"


class QmpCommandError(QmpError):
    """The VMM refused a QMP command; ``command``, ``error_class`` and ``desc`` say which and why."""

    code = "qmp-refused"

    def __init__(self, message: str, *, hint: str | None = None, command: str = "", error_class: str = "",
                 desc: str = "") -> None:
        super().__init__(message, hint=hint)
        self.command, self.error_class, self.desc = command, error_class, desc

    def details(self) -> dict[str, object]:
        return {"command": self.command, "error_class": self.error_class, "desc": self.desc}


class GuestError(HvError):
    """The guest did not answer as expected (not ready, command timed out)."""

    code = "guest-error"
    exit_code = 75


class GuestTimeoutError(GuestError):
    """A command run in the guest did not finish in time (it was interrupted, or could not be)."""

    code = "guest-timeout"


class AgentError(GuestError):
    """No conversation with the guest agent (qemu-ga): none answering, gone, or speaking nonsense."""

    code = "agent-error"


class AgentCommandError(AgentError):
    """The guest agent refused a command; ``command``, ``error_class`` and ``desc`` say which and why."""

    code = "agent-refused"

    def __init__(self, message: str, *, hint: str | None = None, command: str = "", error_class: str = "",
                 desc: str = "") -> None:
        super().__init__(message, hint=hint)
        self.command, self.error_class, self.desc = command, error_class, desc

    def details(self) -> dict[str, object]:
        return {"command": self.command, "error_class": self.error_class, "desc": self.desc}


class ImageBuildError(HvError):
    """Building a guest image failed."""

    code = "image-build-failed"
    exit_code = 73


class RequestError(HvError):
    """A REST request is malformed: bad JSON, unknown fields, too large."""

    code = "bad-request"
    exit_code = 64


class AuthError(HvError):
    """A REST request without a valid token."""

    code = "unauthorized"
    exit_code = 77


class ArgumentError(HvError):
    """An argument is out of range or not a usable value (a NaN timeout, a negative count)."""

    code = "invalid-argument"
    exit_code = 2


class NoSpaceError(HostError):
    """The datastore's file system is full; the operation was undone."""

    code = "no-space"


class ClusterError(HvError):
    """A cluster operation cannot be done: no cluster configured, a host name taken, data in the store malformed."""

    code = "cluster-error"
    exit_code = 69


class ClusterUnreachableError(ClusterError):
    """None of the cluster store's (etcd's) endpoints answered: nothing in the cluster was changed."""

    code = "cluster-unreachable"


class NoHostFitsError(ClusterError):
    """No live host of the cluster may power the VM on (placement): each one's reason is in the message."""

    code = "no-host-fits"


class MigrationError(ClusterError):
    """A live migration did not happen: the VM runs where it ran (or, after its handover, is left paused here)."""

    code = "migration-failed"


class HandoverUncertainError(MigrationError):
    """etcd did not say whether a migration's handover happened: the VM is left stopped at the source, neither
    resumed there (it may run on the destination) nor removed."""

    code = "handover-uncertain"


class ReplicaMissingError(ClusterError):
    """A replication round's target has no replica to update with what changed: the next round must copy whole."""

    code = "replica-missing"


class OwnedElsewhereError(ConflictError):
    """Another host of the cluster owns the VM (it runs there): it may not be powered on here."""

    code = "owned-elsewhere"


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_out_of_space(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) says a file system is full: an OSError, or the text
    of one in what a program reported (qemu-img, QEMU: "No space left on device")."""
    error: BaseException | None = exc
    while error is not None:
        if isinstance(error, NoSpaceError):
            return True
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return True
        if isinstance(error, HvError) and any(os.strerror(code) in error.message for code in _NO_SPACE):
            return True
        error = error.__cause__
    return False


def host_refused(action: str, exc: Exception) -> HostError:
    """The host's file system refused ``action`` ("write the disk /x"): a folder missing, read-only, immutable, on a
    read-only mount (``exc``: the OSError, or SQLite's error). One line saying so; raise it ``from exc``: a full
    file system stays a NoSpaceError."""
    return HostError(f"cannot {action}: {getattr(exc, 'strerror', None) or exc}",
                     hint="check that the folder exists and that this host may write there (permissions, an "
                          "immutable flag: see lsattr, a read-only mount), then retry")


# -- The service's own refusals: conditions of an HTTP request, not of the core API. Their HTTP statuses
# are chosen, by class, in minivisor.service.responses.http_status.
class PayloadTooLargeError(RequestError):
    """A REST request's body is larger than the service reads (64 KiB); it was not read."""

    code = "too-large"
    exit_code = 64


class MethodNotAllowedError(RequestError):
    """A REST request uses an HTTP method its path does not take (the answer's Allow header lists those it does)."""

    code = "method-not-allowed"
    exit_code = 64


class RouteNotFoundError(RequestError):
    """A REST request's path is not a route of the API (/openapi.json lists them)."""

    code = "route-not-found"
    exit_code = 64


class WrongHostError(RequestError):
    """A REST request's Host header names another server: refused unanswered, against DNS rebinding."""

    code = "wrong-host"
    exit_code = 64


class CrossSiteError(RequestError):
    """A change authorized by the web session's cookie alone that does not come from the service's own page."""

    code = "cross-site"
    exit_code = 77


class InternalError(HvError):
    """A bug: minivisor met something it did not expect. The service logs the traceback; the user gets one line."""

    code = "internal-error"
    exit_code = 1


__all__ += ["PayloadTooLargeError", "MethodNotAllowedError", "RouteNotFoundError", "WrongHostError", "CrossSiteError",
            "InternalError"]
