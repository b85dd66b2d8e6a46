#!/usr/bin/env python3
"""minivisor against libvirt, the same work on the same guest image in one run (issue 13).

Method
  - Both sides run as root on this host, from their command-line tools: minivisor's
    CLI (``python -m minivisor``, working on the datastore directly) and libvirt's
    ``virsh -c qemu:///system``. With ``--via-service``, a third side: the same CLI
    commands through a ``minivisor serve`` the script runs on the same datastore (the
    CLI finds it and sends its calls there; the direct side sets MINIVISOR_DIRECT=1).
    With ``--on-demand`` instead, the third side is the CLI as a user runs it: its first
    command (in the warm-up) works by itself and starts the on-demand service, which
    answers the commands after it (minivisor.service.on_demand).
    Each timed figure is the wall time (``time.monotonic``) of the whole command(s),
    process start-up included.
  - Every row runs one untimed warm-up round, then ``--rounds`` rounds, interleaved:
    one command per side, the order rotated every round, so machine noise hits every
    side alike. The table shows each side's median (and min..max) and the median of
    the per-round ratios minivisor/libvirt (< 1: minivisor is faster).
  - libvirt (Debian's ``libvirtd`` with its QEMU driver) is started BY THIS SCRIPT in a
    private mount namespace (``unshare --mount``): tmpfs over /run/libvirt,
    /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, a private copy of
    /etc/libvirt (its own qemu.conf, and the domain XML it saves), and private copies of
    /etc/passwd and /etc/group that add the ``libvirt-qemu`` user the driver insists on.
    ``virsh`` runs in the same namespace (``nsenter --mount``, ~1 ms). At the end every
    domain is destroyed and undefined, the daemon stopped, anything left in the namespace
    killed, and the mount points this script created removed; the last line says so.
    qemu.conf: QEMU runs as root like minivisor's, no security driver, no cgroups (minivisor
    makes none without ``sched.*`` keys), QEMU's output to a file (no virtlogd). libvirt
    keeps its defaults otherwise (seccomp sandbox, a private /dev for each QEMU).
  - The guest is the test appliance (``minivisor image build appliance``), 128 MiB,
    1 vCPU, TCG, no NIC. Both VMs get machine ``pc`` (i440FX), CPU ``qemu64``, an LSI
    53C895A SCSI controller with the qcow2 disk, COM1, VMware SVGA (4 MiB), no USB. What
    differs: minivisor adds a BIOS debug port (bios.log) and a second QMP monitor for its
    console relay, and its COM1 is a socket served by that relay (log + console +
    readiness); libvirt adds an RTC setting, ``-no-shutdown`` and a memory-backend
    object, and its COM1 writes to a file, which this script polls for the ready line.

Rows
  a no-op           ``minivisor --help``                 ``virsh uri`` (connects to libvirtd): the start-up floor
  define/register   ``vm register X.vmx``                ``virsh define X.xml`` (each its own empty qcow2)
  list, 200 VMs     ``vm list``                          ``virsh list --all`` (200 defined, none running)
  start -> ready    ``vm start --wait-ready``            ``virsh start`` + the serial file shows
                                                         "minivisor-guest: ready"
  live snapshot     ``snapshot take`` (running: memory)  ``virsh snapshot-create-as`` (running: internal
                    = overlays + memory file (migrate)   qcow2 snapshot with memory, savevm)
  revert            ``snapshot revert`` to the live snapshot, VM running. Both end the running QEMU and
                    start a new one: minivisor streams the memory file in (migrate-incoming); libvirt
                    9.0 (its QEMU pid changes) kills it as ``virsh destroy`` does, then starts one
                    that loads the internal snapshot (loadvm)
  offline snapshot  ``snapshot take`` (powered off)      ``virsh snapshot-create-as`` (shut off: internal,
                    = new overlay per disk               ``qemu-img snapshot -c``; libvirt 9.0 can revert
                                                         only internal snapshots)
  linked clone      ``vm clone --linked --snapshot base``  ``qemu-img create -b`` + ``virsh define``
  full clone        ``vm clone`` (a VM without snapshots)  ``qemu-img convert -O qcow2`` + ``virsh define``
                                                           (what virt-clone does for a qcow2 volume)

The script makes itself the subreaper of what it starts and reaps exited QEMUs at once:
where PID 1 reaps orphans late (this sandbox's, every ~1.6 s), libvirt's destroy would
wait for that, since it polls until the killed QEMU's pid is gone.

    python bench/peers.py [--rounds 5] [--vms 200] [--via-service] [--only offline,linked] [--base OTHER_SRC]

``--only`` runs some rows (noop, define, list, start, live, revert, offline, linked, full). ``--base`` adds
another minivisor source tree (e.g. ``git archive main src | tar -x -C /tmp/base``, then ``--base
/tmp/base/src``) as more sides, interleaved with the others in the same rounds: its CLI (and, with
``--via-service``, its service) on a datastore of its own with the same VMs; a before/after comparison in
the same conditions.

Needs root, QEMU, and libvirt, which setup.sh does not install (the script checks and
prints the one line to run):
    apt-get install --no-install-recommends libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import glob
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import BenchError, Minivisor, load_average, run, start_service, stop_service, timed

from minivisor import Hypervisor

READY = b"minivisor-guest: ready"
OURS, VIA_SERVICE, ON_DEMAND, THEIRS = "minivisor", "via service", "on demand", "libvirt"
BASE, BASE_VIA_SERVICE = "base", "base via service"
MEMORY_MIB = 128
PR_SET_CHILD_SUBREAPER = 36
LIBVIRT_PACKAGES = "libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
PRIVATE_MOUNTS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")
QEMU_CONF = """\
# minivisor bench/peers.py: a private libvirtd for one benchmark run
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
"""
# Mount the private state, then become libvirtd (unshare execs sh, sh execs libvirtd: one pid throughout).
NAMESPACE_SCRIPT = """\
set -e
for dir in {mounts}; do mount -t tmpfs -o mode=0755 tmpfs "$dir"; done
mount --bind "$1" /etc/libvirt
mount --bind "$2" /etc/passwd
mount --bind "$3" /etc/group
exec libvirtd
"""


def reap_orphaned_qemus() -> None:
    """Reap each QEMU that ends while this script is its subreaper, at once, as a host's init does.

    This sandbox's PID 1 reaps orphans only every ~1.6 s, and ``virsh destroy`` (also inside libvirt's
    revert of a running domain) waits for the QEMU it killed to vanish, zombie included: without this,
    that wait would count against libvirt. (minivisor takes a zombie VMM for gone.)
    """
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    signal.signal(signal.SIGCHLD, _reap_qemu_zombies)


def _reap_qemu_zombies(*_: object) -> None:
    # Only QEMUs: subprocess waits for this script's own children, which must keep their exit codes.
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            end = stat.rindex(")")
            if stat[stat.index("(") + 1:end].startswith("qemu-system") and stat[end + 2] == "Z":
                try:
                    os.waitpid(int(pid), os.WNOHANG)
                except ChildProcessError:  # reaped meanwhile (a handler run nested in this one)
                    pass


def wait_for_ready(serial_log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not (serial_log.exists() and READY in serial_log.read_bytes()):
        if time.monotonic() > deadline:
            raise BenchError(f"the guest did not print its ready line into {serial_log} within {timeout:.0f} s")
        time.sleep(0.01)


# -- the two sides ----------------------------------------------------------------------------------------

def write_specfile(root: Path, name: str, vm_uuid: str) -> Path:
    """A VM folder in the datastore with a specfile (as ``vm create`` writes it) and an empty disk, unregistered."""
    folder = root / name
    folder.mkdir(mode=0o700)
    make_disk(folder / f"{name}.qcow2")
    raw = uuidlib.UUID(vm_uuid).hex
    pairs = [raw[i:i + 2] for i in range(0, 32, 2)]
    entries = {".encoding": "UTF-8", "config.version": "8", "virtualHW.version": "14", "displayName": name,
               "guestOS": "other-64", "firmware": "bios",
               "uuid.bios": " ".join(pairs[:8]) + "-" + " ".join(pairs[8:]),
               "memSize": str(MEMORY_MIB), "numvcpus": "1", "cpuid.coresPerSocket": "1", "svga.present": "TRUE",
               "floppy0.present": "FALSE", "scsi0.present": "TRUE", "scsi0.virtualDev": "lsilogic",
               "scsi0:0.present": "TRUE", "scsi0:0.deviceType": "scsi-hardDisk", "scsi0:0.fileName": f"{name}.qcow2"}
    vmx = folder / f"{name}.vmx"
    vmx.write_text("".join(f'{key} = "{value}"\n' for key, value in entries.items()))
    vmx.chmod(0o600)
    return vmx


class PrivateLibvirt:
    """libvirtd in a private mount namespace, for the length of a ``with`` block; nothing outlives it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.created: list[str] = []  # mount points this run had to create on the host
        self.daemon: subprocess.Popen | None = None
        self.namespace = ""
        self.leftovers: list[str] = []

    def __enter__(self) -> PrivateLibvirt:
        self.work.mkdir(mode=0o700)
        etc = self.work / "etc-libvirt"
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "libvirtd.conf").write_text('log_outputs = "3:stderr"\n')
        passwd, group = self._accounts()
        for mount in PRIVATE_MOUNTS:
            if not os.path.isdir(mount):
                os.makedirs(mount)
                self.created.append(mount)
        script = NAMESPACE_SCRIPT.format(mounts=" ".join(PRIVATE_MOUNTS))
        with open(self.work / "libvirtd.log", "wb") as log:
            self.daemon = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                 str(etc), str(passwd), str(group)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        try:
            self._wait_until_serving()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _accounts(self) -> tuple[Path, Path]:
        """Copies of /etc/passwd and /etc/group with the account Debian's QEMU driver resolves at start-up."""
        passwd, group = self.work / "passwd", self.work / "group"
        users, groups = Path("/etc/passwd").read_text(), Path("/etc/group").read_text()
        if "\nlibvirt-qemu:" not in "\n" + users:
            users += "libvirt-qemu:x:64055:64055:libvirt QEMU (bench/peers.py):/var/lib/libvirt:/usr/sbin/nologin\n"
        for name, gid in (("libvirt-qemu", 64055), ("kvm", 64056)):
            if f"\n{name}:" not in "\n" + groups:
                groups += f"{name}:x:{gid}:\n"
        passwd.write_text(users)
        group.write_text(groups)
        return passwd, group

    def _wait_until_serving(self) -> None:
        assert self.daemon is not None
        deadline = time.monotonic() + 60
        while True:
            if self.daemon.poll() is not None:
                raise BenchError(f"libvirtd exited {self.daemon.returncode}: {self.log_tail()}")
            try:
                self.namespace = os.readlink(f"/proc/{self.daemon.pid}/ns/mnt")
                self.virsh("list", "--all")
                return
            except (BenchError, OSError):
                if time.monotonic() > deadline:
                    raise BenchError(f"libvirtd did not answer within 60 s: {self.log_tail()}") from None
                time.sleep(0.2)

    def log_tail(self) -> str:
        lines = (self.work / "libvirtd.log").read_text(errors="replace").splitlines()
        return " | ".join(lines[-5:])

    def virsh(self, *args: str) -> subprocess.CompletedProcess:
        assert self.daemon is not None
        return run(["nsenter", f"--mount=/proc/{self.daemon.pid}/ns/mnt", "--",
                    "virsh", "-q", "-c", "qemu:///system", *args])

    def domains(self) -> list[str]:
        return self.virsh("list", "--all", "--name").stdout.split()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.daemon is not None and self.daemon.poll() is None:
                for name in self.domains():
                    for command in (["destroy", name], ["undefine", name, "--snapshots-metadata"]):
                        try:
                            self.virsh(*command)
                        except BenchError:
                            pass  # destroy fails on a domain that does not run
        finally:
            self._stop_daemon()
            self.leftovers = self._kill_namespace()
            for mount in reversed(self.created):
                os.rmdir(mount)

    def _stop_daemon(self) -> None:
        if self.daemon is None or self.daemon.poll() is not None:
            return
        self.daemon.terminate()
        try:
            self.daemon.wait(30)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()

    def _kill_namespace(self) -> list[str]:
        """Kill what still runs in the private namespace (started by that libvirtd); returns what it was."""
        found = []
        for proc in glob.glob("/proc/[0-9]*"):
            try:
                if self.namespace and os.readlink(f"{proc}/ns/mnt") == self.namespace:
                    found.append(Path(f"{proc}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80])
                    os.kill(int(proc[6:]), signal.SIGKILL)
            except OSError:
                continue  # it ended meanwhile
        return found

    def verdict(self) -> str:
        """What this run left on the host, checked: processes, mounts, mount points."""
        mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if any(f" {m} " in line for m in (*PRIVATE_MOUNTS, "/etc/libvirt", "/etc/passwd", "/etc/group"))]
        kept = [m for m in self.created if os.path.exists(m)]
        if not (self.leftovers or mounts or kept):
            return "libvirt cleanup: no daemon, no QEMU, no domain, no mount left behind"
        return f"libvirt cleanup: killed {self.leftovers}, mounts {mounts}, mount points {kept}"


def domain_xml(name: str, vm_uuid: str, disk: Path, serial_log: Path | None = None) -> str:
    """A domain as close to minivisor's VM as libvirt spells it (see the module docstring)."""
    serial = (f"<serial type='file'><source path='{serial_log}' append='off'/><target port='0'/></serial>"
              if serial_log else "")
    return f"""<domain type='qemu'>
  <name>{name}</name><uuid>{vm_uuid}</uuid>
  <memory unit='MiB'>{MEMORY_MIB}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='scsi' index='0' model='lsilogic'/>
    <controller type='usb' model='none'/>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
      <target dev='sda' bus='scsi'/></disk>
    {serial}
    <video><model type='vmvga' vram='4096'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def make_disk(path: Path) -> None:
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"])


# -- the rows ----------------------------------------------------------------------------------------------

@dataclass
class Row:
    what: str
    samples: dict[str, list[float]]  # side -> seconds per round; libvirt's side is THEIRS

    def cells(self) -> list[str]:
        ours = [side for side in self.samples if side != THEIRS]
        ratios = [statistics.median(o / t for o, t in zip(self.samples[side], self.samples[THEIRS])) for side in ours]
        return [self.what, *(_seconds(samples) for samples in self.samples.values()),
                *(f"{ratio:.2f}x" for ratio in ratios)]


def _seconds(samples: list[float]) -> str:
    return f"{statistics.median(samples):7.3f} s ({min(samples):.3f}..{max(samples):.3f})"


def compare(what: str, rounds: int, sides: dict[str, Callable[[int], float]]) -> Row:
    """Round 0 warms up; then ``rounds`` interleaved rounds, the order of the sides rotated each time."""
    row = Row(what, {side: [] for side in sides})
    order = list(sides)
    for i in range(rounds + 1):
        for side in order[i % len(order):] + order[:i % len(order)]:
            seconds = sides[side](i)
            if i:
                row.samples[side].append(seconds)
    print(f"  {what}: done", flush=True)
    return row


class Bench:
    """The same VMs on every side: ``boot`` (started, snapshotted, reverted), ``golden`` (snapshot ``base``,
    for linked clones) and ``plain`` (no snapshot, for full clones).

    minivisor's sides are :class:`Minivisor` CLIs on the one datastore (``ours``: direct, and through the
    service with ``--via-service``); each side's prefix keeps the names it makes apart."""

    def __init__(self, mv: Minivisor, lv: PrivateLibvirt, work: Path, image: str,
                 base: Minivisor | None = None) -> None:
        self.mv, self.lv, self.work = mv, lv, work
        self.ours: dict[str, tuple[Minivisor, str]] = {OURS: (mv, "")}
        self.datastores = [mv]  # the direct CLI of each datastore: this tree's, and --base's
        self.disks = work / "libvirt-disks"
        self.disks.mkdir()
        golden_disk = self.disks / "appliance.qcow2"  # the same conversion vm create --boot-disk makes
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", image, str(golden_disk)])
        for name in ("boot", "golden", "plain"):
            shutil.copyfile(golden_disk, self.disks / f"{name}.qcow2")
            serial = self.disks / f"{name}.serial.log" if name == "boot" else None
            self.define(name, self.disks / f"{name}.qcow2", serial)()
        self.make_vms(mv, image)
        if base is not None:
            base("datastore", "allow-path", str(Path(image).parent))
            self.make_vms(base, image)
            self.datastores.append(base)
            self.ours[BASE] = (base, "")

    @staticmethod
    def make_vms(mv: Minivisor, image: str) -> None:
        for name in ("boot", "golden", "plain"):
            mv("vm", "create", name, "--memory", str(MEMORY_MIB), "--boot-disk", image, "--network", "none")
        mv("snapshot", "take", "golden", "base")

    def row(self, what: str, rounds: int, ours: Callable[[Minivisor, str, int], float],
            theirs: Callable[[int], float]) -> Row:
        sides = {side: functools.partial(ours, mv, prefix) for side, (mv, prefix) in self.ours.items()}
        return compare(what, rounds, {**sides, THEIRS: theirs})

    def define(self, name: str, disk: Path, serial_log: Path | None = None) -> Callable[[], object]:
        xml = self.disks / f"{name}.xml"
        xml.write_text(domain_xml(name, str(uuidlib.uuid4()), disk, serial_log))
        return lambda: self.lv.virsh("define", str(xml))

    # define/register
    @staticmethod
    def register_ours(mv: Minivisor, prefix: str, i: int) -> float:
        vmx = write_specfile(mv.root, f"{prefix}reg{i}", str(uuidlib.uuid4()))
        return timed(lambda: mv("vm", "register", str(vmx)))

    def define_theirs(self, i: int) -> float:
        disk = self.disks / f"reg{i}.qcow2"
        make_disk(disk)
        xml = self.disks / f"reg{i}.xml"
        xml.write_text(domain_xml(f"reg{i}", str(uuidlib.uuid4()), disk))
        return timed(lambda: self.lv.virsh("define", str(xml)))

    def fill(self, count: int) -> tuple[list[str], list[str]]:
        """Define VMs up to ``count`` on each side (untimed); returns the names added on each side."""
        ours = []
        for mv in self.datastores:
            hv = Hypervisor(mv.root)
            ours = [f"fill{i}" for i in range(count - len(hv.list_vms()))]
            for name in ours:
                hv.register_vm(write_specfile(mv.root, name, str(uuidlib.uuid4())))
        theirs = [f"fill{i}" for i in range(count - len(self.lv.domains()))]
        commands = []
        for name in theirs:
            disk = self.disks / f"{name}.qcow2"
            make_disk(disk)
            (self.disks / f"{name}.xml").write_text(domain_xml(name, str(uuidlib.uuid4()), disk))
            commands.append(f"define {self.disks / f'{name}.xml'}")
        for start in range(0, len(commands), 50):  # virsh runs a ';'-separated list of commands in one call
            self.lv.virsh("; ".join(commands[start:start + 50]))
        return ours, theirs

    def unfill(self, ours: list[str], theirs: list[str]) -> None:
        for mv in self.datastores:
            hv = Hypervisor(mv.root)
            for name in ours:
                hv.unregister_vm(name)
        for start in range(0, len(theirs), 50):
            self.lv.virsh("; ".join(f"undefine {name}" for name in theirs[start:start + 50]))

    # start -> ready (the VM is powered off again, untimed, after each round)
    @staticmethod
    def start_ours(mv: Minivisor, prefix: str, i: int) -> float:
        seconds = timed(lambda: mv("vm", "start", "boot", "--wait-ready"))
        mv("vm", "stop", "boot", "--hard")
        return seconds

    def start_theirs(self, i: int) -> float:
        serial = self.disks / "boot.serial.log"
        serial.unlink(missing_ok=True)
        seconds = timed(lambda: self.lv.virsh("start", "boot"), lambda: wait_for_ready(serial))
        self.lv.virsh("destroy", "boot")
        return seconds

    def boot_both(self) -> None:
        for mv in self.datastores:
            mv("vm", "start", "boot", "--wait-ready")
        (self.disks / "boot.serial.log").unlink(missing_ok=True)
        self.lv.virsh("start", "boot")
        wait_for_ready(self.disks / "boot.serial.log")

    def stop_both(self) -> None:
        for mv in self.datastores:
            mv("vm", "stop", "boot", "--hard")
        self.lv.virsh("destroy", "boot")

    # clones
    @staticmethod
    def linked_ours(mv: Minivisor, prefix: str, i: int) -> float:
        return timed(lambda: mv("vm", "clone", "golden", f"{prefix}linked{i}", "--linked", "--snapshot", "base"))

    def linked_theirs(self, i: int) -> float:
        disk = self.disks / f"linked{i}.qcow2"
        define = self.define(f"linked{i}", disk)
        return timed(lambda: run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                                  "-b", str(self.disks / "golden.qcow2"), str(disk)]), define)

    @staticmethod
    def full_ours(mv: Minivisor, prefix: str, i: int) -> float:
        return timed(lambda: mv("vm", "clone", "plain", f"{prefix}full{i}", "--full"))

    def full_theirs(self, i: int) -> float:
        disk = self.disks / f"full{i}.qcow2"
        define = self.define(f"full{i}", disk)
        return timed(lambda: run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2",
                                  str(self.disks / "plain.qcow2"), str(disk)]), define)


ROWS = ("noop", "define", "list", "start", "live", "revert", "offline", "linked", "full")


def run_rows(bench: Bench, rounds: int, vms: int, only: tuple[str, ...] = ROWS) -> list[Row]:
    lv = bench.lv
    rows = []
    if "noop" in only:
        rows.append(bench.row("a no-op: the CLI's floor", rounds, lambda mv, _, i: timed(lambda: mv("--help")),
                              lambda i: timed(lambda: lv.virsh("uri"))))
    if "define" in only:
        rows.append(bench.row("define/register", rounds, bench.register_ours, bench.define_theirs))
    if "list" in only:
        added = bench.fill(vms)
        rows.append(bench.row(f"list, {vms} VMs defined", rounds, lambda mv, _, i: timed(lambda: mv("vm", "list")),
                              lambda i: timed(lambda: lv.virsh("list", "--all"))))
        bench.unfill(*added)
    if "start" in only:
        rows.append(bench.row("start -> guest ready", rounds, bench.start_ours, bench.start_theirs))
    if {"live", "revert"} & set(only):
        bench.boot_both()
        rows.append(bench.row(f"live snapshot, {MEMORY_MIB} MiB", rounds,
                              lambda mv, prefix, i: timed(lambda: mv("snapshot", "take", "boot", f"{prefix}live{i}")),
                              lambda i: timed(lambda: lv.virsh("snapshot-create-as", "boot", f"live{i}"))))
        if "revert" in only:
            rows.append(bench.row("revert to it (running)", rounds,
                                  lambda mv, _, i: timed(lambda: mv("snapshot", "revert", "boot", "live0")),
                                  lambda i: timed(lambda: lv.virsh("snapshot-revert", "boot", "live0"))))
        bench.stop_both()
    if "offline" in only:
        rows.append(bench.row("offline snapshot", rounds,
                              lambda mv, prefix, i: timed(lambda: mv("snapshot", "take", "boot", f"{prefix}off{i}")),
                              lambda i: timed(lambda: lv.virsh("snapshot-create-as", "boot", f"off{i}"))))
    if "linked" in only:
        rows.append(bench.row("linked clone", rounds, bench.linked_ours, bench.linked_theirs))
    if "full" in only:
        rows.append(bench.row("full clone (20 MiB used)", rounds, bench.full_ours, bench.full_theirs))
    return rows


def print_table(rows: list[Row], rounds: int) -> None:
    sides = list(rows[0].samples)
    header = ["operation", *(f"{side} median (min..max)" for side in sides),
              *(f"ratio{'' if side == OURS else f' ({side})'}" for side in sides if side != THEIRS)]
    table = [header] + [row.cells() for row in rows]
    widths = [max(len(line[col]) for line in table) for col in range(len(header))]
    print(f"\nmedians of {rounds} interleaved rounds; ratio = median of per-round minivisor/libvirt (< 1: faster)")
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def missing_tools() -> str | None:
    """What this host lacks to run the benchmark, as the one line that fixes it, or None."""
    if os.geteuid() != 0:
        return "bench/peers.py needs root: it starts a private libvirtd in its own mount namespace"
    driver = glob.glob("/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so")
    if not (shutil.which("libvirtd") and shutil.which("virsh") and driver):
        return f"libvirt is not installed; run: apt-get install --no-install-recommends {LIBVIRT_PACKAGES}"
    for tool in ("unshare", "nsenter", "qemu-img", "qemu-system-x86_64"):
        if not shutil.which(tool):
            return f"{tool} is missing; run ./setup.sh (QEMU) or apt-get install util-linux"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per row, after one warm-up [5]")
    parser.add_argument("--vms", type=int, default=200, help="VMs defined on each side for the list row [200]")
    parser.add_argument("--via-service", action="store_true",
                        help="a third side: minivisor's CLI through a minivisor serve on the same datastore")
    parser.add_argument("--on-demand", action="store_true",
                        help="instead: a third side, the CLI as users run it (it starts the on-demand service)")
    parser.add_argument("--only", default=",".join(ROWS), help=f"the rows to run, comma-separated [{','.join(ROWS)}]")
    parser.add_argument("--base", help="another minivisor source tree (the folder holding minivisor/) as more sides")
    options = parser.parse_args()
    only = tuple(options.only.split(","))
    if unknown := set(only) - set(ROWS):
        sys.exit(f"no such row: {', '.join(sorted(unknown))} (the rows: {', '.join(ROWS)})")
    if problem := missing_tools():
        sys.exit(problem)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on a plain kill too
    work = Path(tempfile.mkdtemp(prefix="minivisor-bench-peers-"))
    mv = Minivisor(work / "datastore", direct=True)
    print(f"load average at start: {load_average()}", flush=True)
    base = None
    if options.base:
        base = Minivisor(work / "base-datastore", direct=True)
        base.env["PYTHONPATH"] = options.base
    services = []
    try:
        reap_orphaned_qemus()
        image = mv.appliance()
        lv = PrivateLibvirt(work / "libvirt")
        try:
            with lv:
                try:
                    bench = Bench(mv, lv, work, image, base)
                    if options.via_service:
                        for side, direct in ((VIA_SERVICE, mv), (BASE_VIA_SERVICE, base)):
                            if direct is None:
                                continue
                            through = Minivisor(direct.root)
                            through.env.update({k: v for k, v in direct.env.items() if k == "PYTHONPATH"})
                            services.append(start_service(through, work / f"{side.replace(' ', '-')}.log"))
                            bench.ours[side] = (through, "s")
                    elif options.on_demand:
                        bench.ours[ON_DEMAND] = (Minivisor(mv.root), "o")
                    rows = run_rows(bench, options.rounds, options.vms, only)
                finally:
                    for service in services:
                        stop_service(service)
                    mv.power_off_all()
                    if base is not None:
                        base.power_off_all()
        finally:
            print(lv.verdict())
        print_table(rows, options.rounds)
        print(f"load average at end: {load_average()}")
    except BenchError as exc:
        sys.exit(f"benchmark failed: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
