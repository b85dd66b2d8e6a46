#!/usr/bin/env python3
"""Live migration with local disks: ``minivisor vm migrate`` against the same migration done by hand (issue 14).

Both sides move the test guest between two hosts of this machine, on loopback: the cluster's hosts ``a`` and
``b`` (each its own datastore and ``minivisor serve``, one etcd member: the test lab of tests/cluster), and, by
hand, two QEMU processes started with minivisor's own command line for the VM (``vm explain``), driven over QMP
with the same commands in the same order (a TLS pre-shared key, NBD exports of empty disks on the destination,
``blockdev-mirror`` until in sync, ``migrate``, the mirrors cancelled, the destination told to run) and nothing
else: no etcd, no checks, no VM records. For each memory size (``--sizes``, MiB), load (``idle``; ``writing``:
the guest rewrites a quarter of its memory with random bytes in a loop) and storage (``local``: the disk in the
VM's folder, mirrored; ``shared``: the disk in a folder both hosts allow, named by its absolute path, not copied),
one migration each side; prints the total time, the guest's downtime (QEMU's stop-and-copy; for minivisor plus
the handover until the destination runs) and the bytes sent, with the ratio of the total times.

    python bench/migrate.py [--sizes 128,512,1024] [--loads idle,writing] [--storage local,shared]

One run, no warm-up: a migration of 1 GiB under TCG takes tens of seconds. Everything it starts is stopped at
the end, pass or fail.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BenchError, load_average, serving_itself

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "cluster")]  # the cluster test lab: etcd and hosts on loopback

from lab import Etcd, Host, free_ports, live_hosts  # noqa: E402

from minivisor import Hypervisor  # noqa: E402
from minivisor.vmm import migration as qemu_migration  # noqa: E402
from minivisor.vmm.jobs import device_tops  # noqa: E402
from minivisor.vmm.qmp import QmpSession  # noqa: E402

READY = b"minivisor-guest: ready"
LOAD = ("dd if=/dev/urandom of=/tmp/seed bs=1M count=4 2>/dev/null; "
        "(while :; do for i in $(seq {blocks}); do cat /tmp/seed; done > /tmp/load; done) >/dev/null 2>&1 &")
ADDRESS = "127.0.0.1"
WAIT = 600.0  # seconds any one step may take


def load_command(memory_mib: int) -> str:
    """A loop in the guest that keeps rewriting a quarter of its memory (a tmpfs file of random 4 MiB blocks)."""
    return LOAD.format(blocks=max(1, memory_mib // 16))


# -- minivisor ------------------------------------------------------------------------
def make_vm(a: Host, name: str, image: Path, memory: int, shared: Path | None) -> Path:
    """The VM on host a; with ``shared``, its disk moved there and named by its absolute path. Its specfile."""
    vmx = Hypervisor(a.root).create_vm(name, boot_disk=image, memory_mib=memory, network="none").vmx
    if shared is not None:
        disk = next(vmx.parent.glob("*.qcow2"))
        disk.rename(shared / disk.name)
        vmx.write_text(vmx.read_text().replace(f'fileName = "{disk.name}"', f'fileName = "{shared / disk.name}"'))
    return vmx


def through_minivisor(a: Host, b: Host, image: Path, memory: int, load: str, shared: Path | None) -> dict:
    name = f"mv{memory}{load}{'s' if shared else ''}"
    make_vm(a, name, image, memory, shared)
    a.ok("vm", "start", name, "--wait-ready")
    try:
        if load == "writing":
            Hypervisor(a.root).exec_in_vm(name, load_command(memory), timeout=60)
            time.sleep(2)
        started = time.monotonic()
        moved = a.cli("vm", "migrate", name, "b", "--json", timeout=WAIT)
        if moved.returncode != 0:
            raise BenchError(f"vm migrate {name}: {moved.stderr.strip()}")
        report = json.loads(moved.stdout)
        return {"total": time.monotonic() - started, "downtime_ms": report["downtime_ms"],
                "qemu_downtime_ms": report["qemu_downtime_ms"], "memory_bytes": report["memory_bytes"],
                "disk_bytes": report["disk_bytes"]}
    finally:
        for host in (a, b):
            host.cli("vm", "stop", name, "--hard")


# -- by hand --------------------------------------------------------------------------
class HandVmm:
    """A QEMU started from minivisor's command line for a VM, its sockets and disks moved to ``folder``."""

    def __init__(self, argv: list[str], vm_dir: Path, runtime_dir: str, folder: Path, *, incoming: bool) -> None:
        """``folder`` holds the VM's disk already (the VM folder's files are named from it)."""
        self.folder = folder
        # No relay here: QEMU serves its console (a socket, not the relay's FIFOs) and event sockets itself, and
        # starts paused (run by cont once the console is read, or once the state arrived).
        swapped = [serving_itself(arg.replace(runtime_dir, str(folder)).replace(str(vm_dir), str(folder)))
                   for arg in argv if arg != "-S"]
        swapped = [f"socket,id=console,path={folder / 'serial.sock'},server=on,wait=off"
                   if arg.startswith("pipe,id=console,") else arg for arg in swapped]
        self.process = subprocess.Popen(swapped + ["-S"] + (["-incoming", "defer"] if incoming else []),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=open(folder / "qemu.log", "wb"))
        self.connect("qmp.sock").close()  # QEMU listens
        self.qmp = QmpSession(folder / "qmp.sock", take_turn=False).__enter__()

    def connect(self, name: str) -> socket.socket:
        deadline = time.monotonic() + 30
        while True:
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(str(self.folder / name))
                return sock
            except OSError:
                sock.close()
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"QEMU did not start: {(self.folder / 'qemu.log').read_text()[-400:]}") from None
                time.sleep(0.02)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def wait_until(what: str, check) -> object:
    deadline = time.monotonic() + WAIT
    while not (found := check()):
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {WAIT:.0f} s")
        time.sleep(qemu_migration.POLL)
    return found


def boot_by_hand(source: HandVmm, memory: int, load: str) -> None:
    """Run the paused source with its console read here until the guest is ready; start the load through it."""
    console = source.connect("serial.sock")
    source.qmp.execute("cont")
    seen, deadline = b"", time.monotonic() + WAIT
    while READY not in seen:
        if time.monotonic() > deadline:
            raise BenchError("the guest started by hand did not get ready")
        seen += console.recv(65536)
    if load == "writing":
        console.sendall(b"\n" + load_command(memory).encode() + b"\n")
        time.sleep(2)
    console.close()


def by_hand(a: Host, image: Path, memory: int, load: str, work: Path, shared: Path | None) -> dict:
    """With ``shared``, both QEMUs open the one disk there (the destination's inactive until it runs), nothing
    mirrored; else the source a copy of the VM's disk, mirrored into an empty one of the destination's."""
    name = f"qh{memory}{load}{'s' if shared else ''}"
    vmx = make_vm(a, name, image, memory, shared)
    argv = json.loads(a.ok("vm", "explain", name, "--json"))["argv"]
    runtime_dir = str(Path(next(arg for arg in argv if "qmp.sock" in arg).split("path=")[1].split(",")[0]).parent)
    vm_dir, disk = vmx.parent, next((shared or vmx.parent).glob(f"{name}*.qcow2"))
    (work / f"{name}-src").mkdir()
    if shared is None:
        shutil.copy(disk, work / f"{name}-src")
    source = HandVmm(argv, vm_dir, runtime_dir, work / f"{name}-src", incoming=False)
    destination = None
    try:
        boot_by_hand(source, memory, load)
        started = time.monotonic()
        (work / f"{name}-dst").mkdir()
        if shared is None:
            size = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(disk)],
                                             capture_output=True, check=True).stdout)["virtual-size"]
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / f"{name}-dst" / disk.name),
                            str(size)], check=True)
        destination = HandVmm(argv, vm_dir, runtime_dir, work / f"{name}-dst", incoming=True)
        key = secrets.token_hex(32)
        nbd_port, migrate_port = free_ports(2)
        qemu_migration.add_psk(destination.qmp, "server", destination.folder, key)
        devices = [] if shared else sorted(device_tops(source.qmp))
        qemu_migration.serve_disks(destination.qmp, ADDRESS, nbd_port, devices)
        qemu_migration.listen(destination.qmp, ADDRESS, migrate_port)
        qemu_migration.add_psk(source.qmp, "client", source.folder, key)
        qemu_migration.mirror(source.qmp, ADDRESS, nbd_port, devices)
        mirrored = wait_until("the mirrors' sync",
                              lambda: (p := qemu_migration.mirror_progress(source.qmp, devices)).ready and p)
        qemu_migration.start_migration(source.qmp, ADDRESS, migrate_port)
        info = wait_until("the memory's transfer", lambda: (i := qemu_migration.migration_status(source.qmp))
                          .get("status") == "completed" and i)
        completed = time.monotonic()
        qemu_migration.end_mirrors(source.qmp)
        wait_until("the state's arrival", lambda: qemu_migration.incoming_done(destination.qmp))
        qemu_migration.stop_serving(destination.qmp)
        destination.qmp.execute("cont")
        resumed = time.monotonic()
        return {"total": resumed - started, "downtime_ms": info.get("downtime", 0) + round((resumed - completed) * 1000),
                "qemu_downtime_ms": info.get("downtime", 0), "memory_bytes": info["ram"]["transferred"],
                "disk_bytes": mirrored.total}
    finally:
        for vmm in (source, destination):
            if vmm is not None:
                vmm.close()


def print_table(rows: list[tuple[str, dict, dict]]) -> None:
    print(f"\n{'guest':<24}{'side':<11}{'total':>9}{'downtime':>10}{'(QEMU)':>9}{'memory sent':>13}{'disks':>9}"
          f"{'ratio':>8}")
    for guest, ours, hand in rows:
        for side, result in (("minivisor", ours), ("by hand", hand)):
            ratio = f"{ours['total'] / hand['total']:.2f}x" if side == "minivisor" else ""
            print(f"{guest:<24}{side:<11}{result['total']:>8.2f}s{result['downtime_ms']:>8} ms"
                  f"{result['qemu_downtime_ms']:>6} ms{result['memory_bytes'] / 2**20:>9.1f} MiB"
                  f"{result['disk_bytes'] / 2**20:>5.0f} MiB{ratio:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,512,1024", help="guest memory sizes, MiB [128,512,1024]")
    parser.add_argument("--loads", default="idle,writing", help="idle, writing or both [idle,writing]")
    parser.add_argument("--storage", default="local,shared", help="local, shared or both [local,shared]")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minivisor-bench-migrate-"))
    etcd, hosts = None, []
    print(f"load average at start: {load_average()}", flush=True)
    try:
        (work / "etcd").mkdir()
        etcd = Etcd(work / "etcd", members=1).start()
        for name in ("a", "b"):
            (work / name).mkdir()
            hosts.append(Host(name, work / name))
        a, b = hosts
        a.ok("cluster", "init", "--etcd", etcd.endpoints, "--name", "a")
        b.ok("cluster", "join", "--etcd", etcd.endpoints, "--name", "b")
        for host in hosts:
            host.serve()
        a.status_when("both hosts live", lambda status: live_hosts(status) == {"a", "b"})
        image = Path(a.ok("image", "build", "appliance").strip())
        a.ok("datastore", "allow-path", str(image.parent))
        (work / "shared").mkdir()
        for host in hosts:
            host.ok("datastore", "allow-path", str(work / "shared"))
        rows = []
        for storage in options.storage.split(","):
            shared = work / "shared" if storage == "shared" else None
            for memory in (int(size) for size in options.sizes.split(",")):
                for load in options.loads.split(","):
                    ours = through_minivisor(a, b, image, memory, load, shared)
                    hand = by_hand(a, image, memory, load, work, shared)
                    rows.append((f"{memory} MiB {load} {storage}", ours, hand))
                    print(f"  {rows[-1][0]}: minivisor {ours['total']:.2f} s, by hand {hand['total']:.2f} s",
                          flush=True)
        print_table(rows)
    finally:
        for host in hosts:
            host.close()
        if etcd is not None:
            etcd.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        sys.exit(f"bench/migrate.py: {error}")
