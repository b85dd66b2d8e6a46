"""The appliance boots under bare QEMU and reports, from the guest's view, the hardware it was given.

Each case boots the cached image (copy-on-write, the image is never written)
with one disk controller and one NIC, reads the inventory line from the
serial console, then powers the guest off with the ACPI button over QMP.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from minivisor_appliance.build import INVENTORY_PREFIX, READY_LINE, build_appliance

pytestmark = pytest.mark.qemu

MAC = "00:50:56:aa:aa:aa"
BOOT_TIMEOUT = 90.0  # TCG on a busy 2-core host; an idle one needs ~1.5 s
POWERDOWN_TIMEOUT = 5.0  # the guest itself takes well under a second


@dataclass(frozen=True)
class Case:
    """One VM shape: QEMU options, and what the guest should report for them."""

    name: str
    disk: tuple[str, ...]  # QEMU options attaching drive d0
    controller: str  # PCI driver of the disk's controller, as the guest names it
    disk_driver: str  # block driver, as the guest names it
    nic: tuple[str, str] | None = None  # QEMU model, guest driver
    memory_mib: int = 256
    cpus: int = 1


def scsi(hba: str, *disk_options: str) -> tuple[str, ...]:
    """An HBA with the boot disk as its target 0."""
    return ("-device", f"{hba},id=hba", "-device", ",".join(("scsi-hd,drive=d0,bus=hba.0", *disk_options)))


AHCI = ("-device", "ich9-ahci,id=sata", "-device", "ide-hd,drive=d0,bus=sata.0")
# Linux's mptsas ignores SAS targets whose address (QEMU: the disk's wwn) is 0.
MPTSAS = scsi("mptsas1068", "wwn=0x5000c29000000001")

CASES = [
    Case("lsi53c895a+vmxnet3", scsi("lsi53c895a"), "sym53c8xx", "sd", ("vmxnet3", "vmxnet3"), cpus=2),
    Case("ahci+e1000", AHCI, "ahci", "sd", ("e1000", "e1000"), memory_mib=1024),
    Case(
        "virtio-blk+virtio-net",
        ("-device", "virtio-blk-pci,drive=d0"),
        "virtio-pci",
        "virtio_blk",
        ("virtio-net-pci", "virtio_net"),
        memory_mib=384,
        cpus=2,
    ),
    Case(
        "nvme+e1000e",
        ("-device", "nvme,drive=d0,serial=mv0"),
        "nvme",
        "nvme",
        ("e1000e", "e1000e"),
        memory_mib=512,
    ),
    Case("mptsas1068+pcnet", MPTSAS, "mptsas", "sd", ("pcnet", "pcnet32"), memory_mib=200),
    # The smallest guest minivisor's benchmarks run: the kernel must inflate, unpack and run in 64 MiB.
    Case("ide", ("-device", "ide-hd,drive=d0,bus=ide.0"), "ata_piix", "sd", memory_mib=64, cpus=2),
]


class Qemu:
    """A bare qemu-system-x86_64 (TCG) booting the appliance for one Case."""

    def __init__(self, image: Path, case: Case, workdir: Path) -> None:
        self.qmp_path = workdir / "qmp.sock"
        self.stderr_path = workdir / "stderr.log"
        self.console = b""
        nic = ()
        if case.nic:
            nic = ("-netdev", "hubport,id=n0,hubid=0", "-device", f"{case.nic[0]},netdev=n0,mac={MAC}")
        self.argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-nodefaults", "-display", "none",
            "-no-reboot", "-m", str(case.memory_mib), "-smp", str(case.cpus), "-serial", "stdio",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-drive", f"file={image},format=raw,if=none,id=d0,snapshot=on",
            *case.disk, *nic,
        ]  # fmt: skip

    def __enter__(self) -> Qemu:
        self.started = time.monotonic()
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The first console line starting with prefix (read the console until it comes)."""
        deadline = time.monotonic() + timeout
        while True:
            *complete, _partial = self.console.decode(errors="replace").split("\n")
            for line in complete:
                if line.rstrip("\r").startswith(prefix):
                    return line.rstrip("\r")
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(remaining, 0))
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                raise AssertionError(
                    f"no {prefix!r} line within {timeout} s (QEMU {self.proc.poll()=}); console:\n"
                    f"{self.console.decode(errors='replace')}\nstderr:\n{self.stderr_path.read_text()}"
                )
            self.console += chunk

    def qmp(self, command: str) -> object:
        """Run one QMP command over a fresh connection and return its result."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp_path))
            stream = sock.makefile("rw")
            json.loads(stream.readline())  # the greeting
            for execute in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": execute}) + "\n")
                stream.flush()
                while "return" not in (reply := json.loads(stream.readline())):
                    assert "error" not in reply, reply  # anything else is an event
            return reply["return"]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short private directory (QMP socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mv-appliance-"))
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_guest_reports_its_hardware_and_powers_off_on_acpi_button(
    appliance_image: Path, case: Case, workdir: Path, record_property: pytest.RecordProperty
) -> None:
    with Qemu(appliance_image, case, workdir) as vm:
        inventory = json.loads(
            vm.wait_for_line(INVENTORY_PREFIX, BOOT_TIMEOUT).removeprefix(INVENTORY_PREFIX)
        )
        vm.wait_for_line(READY_LINE, 5)
        record_property("seconds_to_ready", round(time.monotonic() - vm.started, 2))

        assert inventory["memory_mib"] == case.memory_mib
        assert inventory["cpus"] == case.cpus
        assert 0 < inventory["memtotal_kib"] < case.memory_mib * 1024
        boot_disk = [
            disk for disk in inventory["disks"] if disk["size_bytes"] == appliance_image.stat().st_size
        ]
        assert len(boot_disk) == 1, inventory["disks"]
        assert boot_disk[0]["controller"] == case.controller
        assert boot_disk[0]["driver"] == case.disk_driver
        assert boot_disk[0]["removable"] is False
        if case.nic:
            assert [(nic["mac"], nic["driver"]) for nic in inventory["nics"]] == [(MAC, case.nic[1])]
        else:
            assert inventory["nics"] == []

        vm.qmp("system_powerdown")
        assert vm.proc.wait(POWERDOWN_TIMEOUT) == 0


def test_rebuild_with_the_same_inputs_reuses_the_cached_image(appliance_image: Path) -> None:
    before = appliance_image.stat()
    steps: list[str] = []
    again = build_appliance(appliance_image.parent.parent, progress=steps.append)
    assert again == appliance_image
    assert steps == []  # no build step ran
    after = again.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_new_image_reuses_the_packages_and_the_kernel_built_before(appliance_image: Path, tmp_path: Path) -> None:
    cache = appliance_image.parent.parent
    for shared in ("debs", "kernels"):
        (tmp_path / shared).symlink_to(cache / shared)
    steps: list[str] = []
    image = build_appliance(tmp_path, progress=steps.append)
    assert image == tmp_path / "images" / appliance_image.name  # the same inputs, so the same name
    assert [step for step in steps if step.startswith("reusing the kernel built before: vmlinuz-")], steps
    redone = [step for step in steps if step.startswith(("downloading", "unpacking", "configuring", "compiling"))]
    assert redone == []
