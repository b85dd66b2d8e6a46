"""Power-on: one path for every way a VMM starts (start, a memory snapshot's revert, an incoming migration).

The caller holds the VM's turn and its VM lock and has a launch plan (every check
made). :func:`power_on` then keeps the previous boot's console log, in a cluster claims
the VM's ownership (:mod:`minivisor.core.clustering`), admits the VM's
memory next to the VMs the host already holds, launches the VMM the plan describes,
places it on the host's CPUs and cgroups, and reports ``poweredOn``.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import nullcontext
from pathlib import Path

from ..datastore.inventory import file_id, flocked_files
from ..host import facts
from ..host.admission import Commitment, admit, overhead_mib
from ..host.placement import place
from ..spec.vmspec import VmSpec
from ..vmm.plan import LaunchPlan
from ..vmm.process import RuntimeRecord, VmLock
from .clustering import claimed
from .context import VmContext

__all__ = ["power_on", "admit_memory"]


def power_on(ctx: VmContext, plan: LaunchPlan, *, migrating_in: bool = False, ready_signal: bool = False
             ) -> tuple[RuntimeRecord, tuple[str, ...]]:
    """Launch the VMM ``plan`` describes; returns its record and what could not be applied (placement).

    ``migrating_in``: the destination of a live migration (``plan`` is incoming). Its VMM stays paused and
    the VM is not claimed: the source owns it until the handover (:mod:`minivisor.core.migration`).
    ``ready_signal``: the caller waits for the guest's ready line next (see ``Vmm.launch``).
    """
    _rotate(ctx.paths.serial_log)
    ctx.paths.bios_log.unlink(missing_ok=True)
    # in a cluster, this host owns the VM before its VMM starts (given up if it does not start)
    with nullcontext() if migrating_in else claimed(ctx):
        record = _launch(ctx, plan, run=not migrating_in, ready_signal=ready_signal)
    ctx.running = True
    warnings = place(record.pid, plan.spec, ctx.name)
    ctx.emit("poweredOn", pid=record.pid, accel=record.accel)
    return record, warnings


def _launch(ctx: VmContext, plan: LaunchPlan, *, run: bool, ready_signal: bool) -> RuntimeRecord:
    """Admit the VM's memory, make what its VMM opens (variables, overlays, taps), and start the VMM."""
    claim = admit_memory(ctx, plan.spec, plan.env.accel)  # under the VM lock, which keeps the claim valid
    # the network modules only for a VM with a NIC on a host network, or with port forwards of QEMU's user-mode
    # NAT whose host ports must still be free (~10 % of the CLI's work before QEMU starts)
    networks = ctx.networks() if plan.taps or plan.user_forwards else None
    try:
        _make_efi_vars(ctx, plan)
        _make_discard_overlays(plan)
        if networks is not None:
            networks.plug(ctx, plan)  # its taps on their networks' bridges: QEMU opens them by name
        record = ctx.vmm.launch(plan.argv, plan.env.accel, plan.links_down, ready_text=plan.spec.ready_line,
                                console=plan.env.console_index is not None, paused=plan.env.starts_paused, run=run,
                                ready_signal=ready_signal)
    except BaseException:
        claim.unlink(missing_ok=True)
        if networks is not None and plan.taps:
            networks.unplug(ctx)
        raise
    finally:
        _drop_discard_names(plan)
    return record


def admit_memory(ctx: VmContext, spec: VmSpec, accel: str | None = None) -> Path:
    """Refuse the power-on if the host cannot hold it next to the VMs already committed; returns the claim.

    Each admitted power-on leaves a commitment, ``.minivisor/committed/<uuid>``,
    which counts for as long as that VM's lock is held (its VMM runs, or its
    power-on is under way) and is pruned once it is not. The decision and the
    commitment happen under one datastore-wide lock, so concurrent power-ons
    count each other exactly once, and the check costs one look per running VM,
    not per registered VM. The caller removes the claim if the launch fails;
    otherwise it stays while the VMM runs.
    """
    committed = ctx.datastore.meta / "committed"
    committed.mkdir(mode=0o700, exist_ok=True)
    guard = os.open(ctx.datastore.meta / "admission.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)  # held for milliseconds: no launch happens under it
        admit(spec, ctx.name, _commitments(ctx, committed), total_mib=facts.host_memory_mib(),
              available_mib=facts.available_memory_mib(), accel=accel)
        claim = committed / ctx.uuid
        claim.write_text(f"{os.getpid()}\n")
        return claim
    finally:
        os.close(guard)


def _commitments(ctx: VmContext, committed: Path) -> list[Commitment]:
    """The other VMs the host holds now; stale commitments are pruned on the way."""
    claims = [uuid for uuid in os.listdir(committed) if uuid != ctx.uuid]
    if not claims:  # the first VM to run: no catalog scan, no /proc/locks read (~10 ms: an RCU grace period)
        return []
    by_uuid = {entry.uuid: entry for entry in ctx.datastore.catalog.list()}
    locked = flocked_files()
    held = []
    for uuid in claims:
        entry = by_uuid.get(uuid)
        if entry is None:
            (committed / uuid).unlink(missing_ok=True)  # that VM was deleted or unregistered
            continue
        lock = ctx.inventory.paths_of(entry).lock
        if (file_id(str(lock)) in locked) if locked is not None else VmLock(lock).is_held_elsewhere():
            held.append(entry)
        else:
            (committed / uuid).unlink(missing_ok=True)  # that VMM is gone
    summaries = ctx.inventory.summaries(held)
    others = []
    for entry in held:
        record = RuntimeRecord.load(ctx.inventory.paths_of(entry).runtime_record)
        summary = summaries[entry.name]
        memory = summary.get("memory_mib", 0)
        others.append(Commitment(entry.name, memory, summary.get("mem_min_mib", 0), record.pid if record else None,
                                 overhead_mib(memory, record.accel if record else None)))
    return others


def _make_efi_vars(ctx: VmContext, plan: LaunchPlan) -> None:
    """An EFI VM's first power-on (and the first after ``vm reset-nvram``) gets its own copy of OVMF's
    variable template, as qcow2: a raw one would stop QEMU from saving the VM's state."""
    target = ctx.paths.efi_vars
    if plan.env.uefi is None or os.path.lexists(target):
        return
    from ..images.layers import read_layer
    from ..images.qemu_img import convert_disk

    partial = target.with_name(target.name + ".part")  # a power-on killed while copying leaves no half store
    partial.unlink(missing_ok=True)
    convert_disk((read_layer(plan.env.uefi.vars_template, "raw"),), partial, "qcow2")
    os.replace(partial, target)


def _make_discard_overlays(plan: LaunchPlan) -> None:
    """A fresh overlay over each independent-nonpersistent disk: the guest's writes go there."""
    if not plan.discard_overlays:
        return
    from ..images.qcow2 import create_overlay

    for overlay, disk in plan.discard_overlays:
        overlay.path.unlink(missing_ok=True)  # left by a power-on that died before it could drop the name
        create_overlay(overlay.path, disk)


def _drop_discard_names(plan: LaunchPlan) -> None:
    """Unlink the overlays: a running VMM has them open, so their data lives exactly as long as it does
    (discarded at power-off, however the VMM ends); a VMM that did not start leaves nothing behind."""
    for overlay, _ in plan.discard_overlays:
        overlay.path.unlink(missing_ok=True)


def _rotate(log: Path) -> None:
    """Keep the previous boot's console log as ``serial.log.1``."""
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))
