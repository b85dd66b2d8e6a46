"""Work a running VMM does on its VM's disks and memory, over one QMP session.

- **Online snapshot**: pause, ``blockdev-add`` the new qcow2 overlays (made
  beforehand with an explicit backing format and opened with ``backing: null``),
  save the memory and device state to a file (``migrate`` to a descriptor passed
  with ``getfd``: QEMU's sandbox forbids ``exec:``), then ``blockdev-snapshot``
  the overlays in one ``transaction``, and continue. The memory goes first: while
  the VM is paused either order gives the same state, and a save that fails (a
  full datastore) leaves nothing to undo in the VMM.
- **Restoring memory**: a VMM started with ``-incoming defer`` reads a state file
  back (``migrate-incoming``).
- **Merging layers**: ``block-commit`` folds a layer into the one below it,
  ``block-stream`` copies a lower layer's data up; nodes are found in the device's
  block graph, and a job a killed minivisor left behind is finished first.

Every function takes an open :class:`~minivisor.vmm.qmp.QmpSession`; the caller
decides what the work means for the VM's files (journal, specfile, tree).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DiskError, QmpCommandError, QmpError
from ..files import fsync_dir
from ..storage.journal import crashpoint
from .argv import GATE_PREFIX, gate_group
from .qmp import QmpSession

__all__ = ["Overlay", "take_snapshot", "load_state", "check_state_saveable", "resize_disk", "overlays_in_use",
           "reopen_closed_chains",
           "drop_nodes", "commit_layer", "stream_layer", "real_file", "resume_if_paused", "JOB_TIMEOUT",
           "insert_medium", "eject_medium"]

JOB_TIMEOUT = 300.0  # seconds a migration or block job may take
POLL = 0.05
STATE_FD = "minivisor-state"
# QEMU block drivers that refuse to let a VM's state be saved while one of their images is open: each
# adds a migration blocker when it opens an image (QEMU's vmdk driver: "does not support live migration"),
# and a memory snapshot is a migration to a file. Of the formats minivisor runs, only VMDK.
MIGRATION_BLOCKING_DRIVERS = ("vmdk",)
HOLE_PREFIX = "hole-"  # the empty placeholder a gate points at while its chain is closed for a save
WRITEBACK_EVERY = 0.005  # seconds between two nudges of the kernel to write a state file being saved


@dataclass(frozen=True)
class Overlay:
    """A new top layer for one disk: the device (``scsi0-0``), the delta file, its node name and format."""

    device: str
    path: Path
    node: str
    format: str


def take_snapshot(qmp: QmpSession, overlays: list[Overlay], *, state_file: Path | None,
                  before_switch: Callable[[], None], pause: bool) -> None:
    """Switch every disk to its overlay at one instant, with the memory saved first (``state_file``).

    ``before_switch`` runs once everything is ready and nothing has changed yet (the caller commits its
    journal there). ``pause``: the VM runs now; it is paused for the snapshot and continued after.
    """
    if pause:
        qmp.execute("stop")
    try:
        tops = device_tops(qmp)
        missing = [overlay.device for overlay in overlays if overlay.device not in tops]
        if missing:
            raise QmpError(f"the running VMM has no disk {missing[0]}", hint="restart the VM, then retry")
        if state_file is not None:  # before the overlays open: a VMDK delta would block the save
            _save_state(qmp, state_file)
        crashpoint("take-online:saved")
        actions = []
        for overlay in overlays:
            qmp.execute("blockdev-add", {"driver": overlay.format, "node-name": overlay.node, "backing": None,
                                         "file": {"driver": "file", "filename": str(overlay.path)}})
            actions.append({"type": "blockdev-snapshot", "data": {"node": tops[overlay.device], "overlay": overlay.node}})
        before_switch()  # from here on the overlays may be in use
        crashpoint("take-online:committed")
        qmp.execute("transaction", {"actions": actions})
        crashpoint("take-online:switched")
    finally:
        if pause:
            qmp.execute("cont")


def _save_state(qmp: QmpSession, final: Path) -> None:
    """The VM's memory and device state into ``final`` (written as ``final.part``, renamed once whole).

    The VM is paused. Chains with VMDK layers are closed for the save (QEMU's vmdk driver blocks a
    migration while an image is open) and opened again after it, succeeded or not.
    """
    partial = final.with_name(final.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        closed = _close_gated_chains(qmp)
        crashpoint("take-online:closed")
        try:
            qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
            _report_migration(qmp)
            qmp.pass_fd(fd, STATE_FD)
            with _written_back_meanwhile(fd):
                qmp.execute("migrate", {"uri": f"fd:{STATE_FD}"})
                _wait_migration(qmp, "save the memory state")
        finally:
            _reopen_gated_chains(qmp, closed)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, final)
    fsync_dir(final.parent)


@contextmanager
def _written_back_meanwhile(fd: int) -> Iterator[None]:
    """While the block runs (QEMU writing a memory state into ``fd``), have the kernel start writing what is
    already there every few milliseconds (``POSIX_FADV_DONTNEED`` starts the writeback of dirty pages and
    waits for none), so the fsync after the save, while the guest is still paused, waits for the state's
    last pages rather than all of it (~10 ms less for a 128 MiB guest on this host's ext4)."""
    import threading  # here: only a memory snapshot needs a thread

    done = threading.Event()

    def nudge() -> None:
        while not done.wait(WRITEBACK_EVERY):
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                return  # the fsync after the save writes it all anyway

    thread = threading.Thread(target=nudge, name="state-writeback", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@dataclass(frozen=True)
class _Layer:
    """One format node of a disk's chain as the VMM has it open, to be opened again the same way."""

    node: str
    driver: str
    filename: str
    read_only: bool
    file_node: str | None  # a file node of its own (from -blockdev), else one made with the format node


@dataclass(frozen=True)
class _ClosedChain:
    gate: str
    read_only: bool
    hole: str
    layers: tuple[_Layer, ...]  # top first


def _close_gated_chains(qmp: QmpSession) -> list[_ClosedChain]:
    """Point every gate (the filter node a disk with VMDK layers hangs from) at an empty placeholder of the
    disk's size and close the chain under it. The VM is paused: the guest sees nothing of it."""
    graph = _Graph(qmp)
    closed: list[_ClosedChain] = []
    try:
        for gate in graph.gates():
            layers = graph.layers(graph.child(gate, "file"))
            hole = f"{HOLE_PREFIX}{gate}"
            qmp.execute("blockdev-add", {"driver": "null-co", "node-name": hole,
                                         "size": graph.infos[gate]["image"]["virtual-size"]})
            _point_gate(qmp, gate, graph.infos[gate]["ro"], hole)
            closed.append(_ClosedChain(gate, graph.infos[gate]["ro"], hole, layers))
            for layer in layers:
                qmp.execute("blockdev-del", {"node-name": layer.node})
                if layer.file_node:
                    qmp.execute("blockdev-del", {"node-name": layer.file_node})
    except BaseException:
        _reopen_gated_chains(qmp, closed)
        raise
    return closed


def _reopen_gated_chains(qmp: QmpSession, closed: list[_ClosedChain]) -> None:
    """Open the chains :func:`_close_gated_chains` closed again, node names kept, and put them back under
    their gates (a layer still open is left as it is)."""
    if not closed:
        return
    open_nodes = {info["node-name"] for info in qmp.execute("query-named-block-nodes", {"flat": True})}
    for chain in closed:
        below: str | None = None
        for layer in reversed(chain.layers):
            if layer.node not in open_nodes:
                file: Any = {"driver": "file", "filename": layer.filename, "read-only": layer.read_only}
                if layer.file_node:
                    qmp.execute("blockdev-add", {**file, "node-name": layer.file_node})
                    file = layer.file_node
                qmp.execute("blockdev-add", {"driver": layer.driver, "node-name": layer.node, "file": file,
                                             "read-only": layer.read_only, "backing": below})
            below = layer.node
        _point_gate(qmp, chain.gate, chain.read_only, chain.layers[0].node)
        qmp.execute("blockdev-del", {"node-name": chain.hole})


def reopen_closed_chains(qmp: QmpSession, chains: dict[str, list[tuple[Path, str]]]) -> None:
    """After a snapshot was killed with disks closed for its save: open each such disk's chain again.

    ``chains``: device -> its layers (path, format), top first, as the specfile names them (unchanged
    until a snapshot commits). A disk left out stays on its placeholder (:func:`resume_if_paused`
    then refuses to run the guest).
    """
    graph = _Graph(qmp)
    roots = {node: device for device, node in _device_roots(qmp).items()}
    tag = secrets.token_hex(3)
    closed = []
    for gate in graph.gates():
        hole, device = graph.child(gate, "file") or "", roots.get(gate)
        if hole.startswith(HOLE_PREFIX) and device in chains:
            read_only = graph.infos[gate]["ro"]
            layers = tuple(_Layer(f"fmt-{device}-{depth}-{tag}", fmt, str(path), read_only or depth > 0, None)
                           for depth, (path, fmt) in enumerate(chains[device]))
            closed.append(_ClosedChain(gate, read_only, hole, layers))
    _reopen_gated_chains(qmp, closed)


def _point_gate(qmp: QmpSession, gate: str, read_only: bool, child: str) -> None:
    qmp.execute("blockdev-reopen", {"options": [{"driver": "throttle", "node-name": gate, "file": child,
                                                 "throttle-group": gate_group(gate), "read-only": read_only}]})


class _Graph:
    """The VMM's block graph at one moment: nodes, their children, and what each node is."""

    def __init__(self, qmp: QmpSession) -> None:
        graph = qmp.execute("x-debug-query-block-graph")
        self.names = {node["id"]: node["name"] for node in graph["nodes"]}
        self.ids = {name: node_id for node_id, name in self.names.items()}
        self.edges = {(edge["parent"], edge["name"]): edge["child"] for edge in graph["edges"]}
        self.infos = {info["node-name"]: info for info in qmp.execute("query-named-block-nodes", {"flat": True})}

    def gates(self) -> list[str]:
        return [name for name in self.infos if name.startswith(GATE_PREFIX)]

    def child(self, node: str, edge: str) -> str | None:
        child = self.edges.get((self.ids[node], edge))
        return self.names.get(child) if child is not None else None

    def layers(self, top: str | None) -> tuple[_Layer, ...]:
        layers = []
        while top is not None:
            file_node = self.child(top, "file")
            info = self.infos[top]
            layers.append(_Layer(top, info["drv"], real_file(info["file"]), info["ro"],
                                 file_node if file_node and not file_node.startswith("#") else None))
            top = self.child(top, "backing")
        return tuple(layers)


def load_state(qmp: QmpSession, state_file: Path) -> None:
    """Feed a saved state into a VMM started with ``-incoming defer``, and let the VM run."""
    fd = os.open(state_file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _report_migration(qmp)
        qmp.pass_fd(fd, STATE_FD)
        qmp.execute("migrate-incoming", {"uri": f"fd:{STATE_FD}"})
        _wait_migration(qmp, "load the memory state")
    finally:
        os.close(fd)
    if qmp.execute("query-status")["status"] != "running":
        qmp.execute("cont")


def _report_migration(qmp: QmpSession) -> None:
    """Have the VMM announce each change of a migration's status (a MIGRATION event) on this session."""
    qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})


def _wait_migration(qmp: QmpSession, what: str) -> None:
    """Until the migration ends: woken by its MIGRATION events (no polling), its outcome read once."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        info = qmp.execute("query-migrate")  # also catches one that ended before its last event was taken
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise QmpError(f"the VMM could not {what}: {info.get('error-desc', status)}",
                           hint="see the VM's vmm.log")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QmpError(f"the VMM did not {what} within {JOB_TIMEOUT:.0f} s", hint="see the VM's vmm.log")
        try:
            qmp.wait_event({"MIGRATION"}, remaining)
        except QmpError:
            if time.monotonic() < deadline:
                raise  # the monitor went away, not a timeout


def check_state_saveable(qmp: QmpSession, vm: str) -> None:
    """Refuse a memory snapshot the VMM would refuse, before the VM is paused or anything is made: a VMDK
    image open elsewhere than under a gate (a VMM started before gates, or an image hot-added)."""
    graph = _Graph(qmp)
    gated = {layer.node for gate in graph.gates() for layer in graph.layers(graph.child(gate, "file"))}
    blocking = sorted({Path(real_file(info["file"])).name for name, info in graph.infos.items()
                       if info["drv"] in MIGRATION_BLOCKING_DRIVERS and name not in gated})
    if blocking:
        raise DiskError(f"cannot save the memory of VM {vm!r}: QEMU cannot save a VM's state while a "
                        f"VMDK disk is open ({', '.join(blocking)})",
                        hint="power the VM off and on again (it then opens VMDK disks so that their state "
                             "can be saved), or take the snapshot without it (--no-memory)")


def resume_if_paused(qmp: QmpSession) -> None:
    """Continue a VM an interrupted snapshot left paused (or stopped after saving its state).

    A snapshot killed while a disk's chain was closed for the save left that disk on its placeholder:
    the guest must not run on it (it would read zeros), so that VM is refused, still paused.
    """
    graph = _Graph(qmp)
    if any((graph.child(gate, "file") or "").startswith(HOLE_PREFIX) for gate in graph.gates()):
        raise QmpError("a memory snapshot was interrupted while the VM's VMDK disks were closed",
                       hint="power the VM off (minivisor vm stop --hard); its disks are as they were when "
                            "it paused, and it starts again from them")
    if qmp.execute("query-status")["status"] in ("paused", "postmigrate"):
        qmp.execute("cont")


def resize_disk(qmp: QmpSession, device: str, size: int) -> None:
    """Grow a running VM's disk; the guest sees the new size."""
    qmp.execute("block_resize", {"node-name": device_tops(qmp)[device], "size": size})


def overlays_in_use(qmp: QmpSession, nodes: list[str]) -> bool:
    """True if the overlay nodes are the running disks' tops (a snapshot switched), not just opened."""
    tops = set(device_tops(qmp).values())
    if any(node in tops for node in nodes) and not all(node in tops for node in nodes):
        raise QmpError("the VM switched only some disks to a snapshot's overlays",
                       hint="stop the VM, then run any snapshot command to finish the snapshot")
    return bool(nodes) and all(node in tops for node in nodes)


def drop_nodes(qmp: QmpSession, nodes: list[str]) -> None:
    """Close overlay nodes an interrupted online snapshot opened but never used."""
    for node in nodes:
        try:
            qmp.execute("blockdev-del", {"node-name": node})
        except QmpCommandError:
            pass  # never added, or already gone


def commit_layer(qmp: QmpSession, device: str, top: str, base: str, backing: str | None) -> None:
    """Fold layer ``top`` (a real path) into ``base`` in the running VMM (idempotent).

    ``backing``: the name the layer above ``top`` records for ``base`` once ``top`` is gone.
    """
    _finish_jobs(qmp)  # one a killed minivisor left behind
    root = device_tops(qmp).get(device)
    chain = _device_chain(qmp, root) if root else {}
    attached = _device_roots(qmp).get(device)  # block-commit takes the device's own root: a gate, if it has one
    if top not in chain:
        return  # already folded and dropped from the device's chain
    if base not in chain:
        raise QmpError(f"the running VMM's disk {device} has no layer {base}",
                       hint="power the VM off, then run any snapshot command to finish the delete")
    _let_write(qmp, chain[base])
    arguments: dict[str, Any] = {"job-id": _job_id("commit"), "device": attached, "top-node": chain[top],
                                 "base-node": chain[base], "auto-dismiss": False}
    if backing:
        arguments["backing-file"] = backing
    qmp.execute("block-commit", arguments)
    crashpoint("delete:online-commit-started")
    _finish_jobs(qmp)
    try:  # an overlay added by an online snapshot is also held by the monitor: let it go
        qmp.execute("blockdev-del", {"node-name": chain[top]})
    except QmpCommandError:
        pass


def _let_write(qmp: QmpSession, node: str) -> None:
    """Make a layer's own file node writable (a VMM started on a snapshot opened it read-only, by name).

    block-commit reopens the format node read-write itself, but not a file node made apart from it.
    """
    graph = _Graph(qmp)
    file_node = graph.child(node, "file")
    if file_node and not file_node.startswith("#") and graph.infos[file_node]["ro"]:
        qmp.execute("blockdev-reopen", {"options": [{"driver": "file", "node-name": file_node, "read-only": False,
                                                     "filename": graph.infos[file_node]["file"]}]})


def stream_layer(qmp: QmpSession, device: str, top: str, frozen: str, base: str | None,
                 backing: str | None) -> None:
    """Copy ``frozen``'s data into layer ``top`` (real paths) and drop it from the chain (idempotent)."""
    _finish_jobs(qmp)
    root = device_tops(qmp).get(device)
    chain = _device_chain(qmp, root) if root else {}
    if frozen not in chain:
        return  # already streamed: the frozen layer left the chain
    if top not in chain:
        raise QmpError(f"the running VMM's disk {device} has no layer {top}",
                       hint="power the VM off, then run any snapshot command to finish the delete")
    arguments: dict[str, Any] = {"job-id": _job_id("stream"), "device": chain[top], "auto-dismiss": False}
    if base is not None:
        arguments["base-node"] = chain[base]
        arguments["backing-file"] = backing
    qmp.execute("block-stream", arguments)
    crashpoint("delete:online-stream-started")
    _finish_jobs(qmp)


def real_file(name: str) -> str:
    """The host file behind a node's filename (QEMU shows ``json:{...}`` once a backing was given)."""
    if name.startswith("json:"):
        child = json.loads(name[5:]).get("file")
        name = child.get("filename", "") if isinstance(child, dict) else str(child)
    return os.path.realpath(name)


def _job_id(kind: str) -> str:
    return f"minivisor-{kind}-{secrets.token_hex(3)}"


def _device_roots(qmp: QmpSession) -> dict[str, str]:
    """Device (``scsi0-0``) -> the node it is attached to."""
    return {b["qdev"]: b["inserted"]["node-name"] for b in qmp.execute("query-block")
            if b.get("qdev") and b.get("inserted")}


def device_tops(qmp: QmpSession) -> dict[str, str]:
    """Device (``scsi0-0``) -> the node name of its top layer (below its gate, if it has one)."""
    tops = _device_roots(qmp)
    if any(node.startswith(GATE_PREFIX) for node in tops.values()):
        graph = _Graph(qmp)
        tops = {device: (graph.child(node, "file") or node) if node.startswith(GATE_PREFIX) else node
                for device, node in tops.items()}
    return tops


def _device_chain(qmp: QmpSession, root: str) -> dict[str, str]:
    """Real path -> node name of each format layer of a device's chain, top first (from the block graph)."""
    graph = qmp.execute("x-debug-query-block-graph")
    names = {node["id"]: node["name"] for node in graph["nodes"]}
    ids = {name: node_id for node_id, name in names.items()}
    backing = {edge["parent"]: edge["child"] for edge in graph["edges"] if edge["name"] == "backing"}
    infos = {info["node-name"]: info for info in qmp.execute("query-named-block-nodes", {"flat": True})}
    chain: dict[str, str] = {}
    node_id = ids.get(root)
    while node_id is not None and names.get(node_id) in infos:
        name = names[node_id]
        chain.setdefault(real_file(infos[name]["image"]["filename"]), name)
        node_id = backing.get(node_id)
    return chain


def _finish_jobs(qmp: QmpSession) -> None:
    """Drive minivisor's block jobs to the end: complete ready ones, dismiss concluded ones."""
    deadline = time.monotonic() + JOB_TIMEOUT
    completed: set[str] = set()
    while True:
        jobs = [j for j in qmp.execute("query-jobs") if j["id"].startswith("minivisor-")]
        if not jobs:
            return
        for job in jobs:
            if job["status"] == "ready" and job["id"] not in completed:
                completed.add(job["id"])
                qmp.execute("job-complete", {"id": job["id"]})
            elif job["status"] == "concluded":
                qmp.execute("job-dismiss", {"id": job["id"]})
                if job.get("error"):
                    raise QmpError(f"the VMM could not merge the snapshot: {job['error']}",
                                   hint="see the VM's vmm.log; the snapshot is kept")
        if time.monotonic() > deadline:
            raise QmpError("the VMM did not finish merging the snapshot in time", hint="retry the delete")
        time.sleep(POLL)


def insert_medium(qmp: QmpSession, device: str, node: str, image: Path) -> None:
    """Put an image (raw, read-only, opened by its checked path: never a name QEMU parses) in a running CD-ROM
    drive, with the tray opening and closing as a guest sees it on VMware."""
    eject_medium(qmp, device, close=False)
    qmp.execute("blockdev-add", {"driver": "raw", "node-name": node, "read-only": True,
                                 "file": {"driver": "file", "filename": str(image), "read-only": True}})
    qmp.execute("blockdev-insert-medium", {"id": device, "node-name": node})
    qmp.execute("blockdev-close-tray", {"id": device})


def eject_medium(qmp: QmpSession, device: str, *, close: bool = True) -> None:
    """Take the medium out of a running CD-ROM drive (even one the guest locked) and close its nodes."""
    inserted = next((b.get("inserted") for b in qmp.execute("query-block") if b.get("qdev") == device), None)
    qmp.execute("blockdev-open-tray", {"id": device, "force": True})
    qmp.execute("blockdev-remove-medium", {"id": device})
    if inserted:  # its format node, then the file node a -blockdev made apart from it (gone with it otherwise)
        for name in (inserted["node-name"], inserted["node-name"].replace("fmt-", "file-", 1)):
            try:
                qmp.execute("blockdev-del", {"node-name": name})
            except QmpCommandError:
                pass  # an implicit file node went with its format node
    if close:
        qmp.execute("blockdev-close-tray", {"id": device})
