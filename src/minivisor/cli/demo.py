"""The demo: the lecture's specfile, powered on and seen from inside the guest.

It builds the appliance, allows its folder (images are copied in only from
folders the user allowed), copies the seed's CentOS7 specfile into the
datastore with the appliance as its disk (named exactly as the specfile says),
registers it, powers it on, follows it from BIOS to boot to guest ready,
compares the hardware the guest sees with what the specfile asked for, and
powers it off.
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path

from minivisor_appliance.build import build_appliance

from .. import dirs
from ..core.hypervisor import Hypervisor
from ..spec.vmspec import VmSpec
from ..spec.vmx import VmxDocument
from ..images.qemu_img import convert_disk
from ..vmm.console import wait_for_line
from . import command, say
from .output import table

__all__ = ["run_demo", "SEED_VMX"]

SEED_VMX = "CentOS7-Minimal64-1708.vmx"
DEMO_NAME = "CentOS7-Minimal64-1708"


@command("demo")
def demo() -> None:
    from . import hv

    run_demo(hv(direct=True))


def run_demo(hv: Hypervisor) -> None:
    step = _Steps()
    step("Build the test guest from Debian packages (cached after the first run)")
    image = build_appliance(dirs.cache_dir(), progress=lambda line: say(f"    {line}"))
    say(f"    appliance: {image}")

    step(f"Put the lecture's specfile into the datastore {hv.datastore.root}")
    vmx = _place_seed(hv, image)
    spec = VmSpec.from_vmx(VmxDocument.parse(vmx.read_bytes(), source=str(vmx)))
    say(f"    {vmx}")
    say(f"    boot disk {spec.boot_disk.node} = {spec.boot_disk.file_name} (the appliance, as VMDK)")

    step("Power on: one VMM process (QEMU) builds the virtual hardware from the specfile")
    started = time.monotonic()
    result = hv.start_vm(DEMO_NAME)
    for warning in result.warnings:
        say(f"    warning: {warning}")
    say(f"    VMM pid {result.vm.pid}, accelerator {result.vm.accel}")
    paths = hv.vm_paths(DEMO_NAME)

    step("BIOS -> boot from the disk -> guest ready")
    bios = wait_for_line(paths.bios_log, "SeaBIOS", 30)
    say(f"    {time.monotonic() - started:5.2f} s  BIOS:  {bios}")
    boot = wait_for_line(paths.bios_log, "Booting from", 30)
    say(f"    {time.monotonic() - started:5.2f} s  BIOS:  {boot}")
    ready = hv.wait_ready(DEMO_NAME, timeout=120)
    say(f"    {time.monotonic() - started:5.2f} s  guest: {ready}")

    step("The virtual hardware as the guest sees it, next to what the specfile asked for")
    inventory = json.loads(wait_for_line(paths.serial_log, "minivisor-guest: inventory", 5).split(" ", 2)[2])
    _compare(spec, hv.get_vm(DEMO_NAME).nics, inventory)
    uname = hv.exec_in_vm(DEMO_NAME, ["uname", "-sr"])
    say(f"    vm exec {DEMO_NAME} -- uname -sr  ->  {uname.output.strip()} (exit {uname.exit_code})")

    step("Power off (ACPI shutdown)")
    how = hv.stop_vm(DEMO_NAME, timeout=30)
    say(f"    powered off ({how}); state: {hv.get_vm(DEMO_NAME).state.value}")


class _Steps:
    def __init__(self) -> None:
        self.number = 0

    def __call__(self, title: str) -> None:
        self.number += 1
        say("")
        say(f"{self.number}. {title}")


def _place_seed(hv: Hypervisor, image: Path) -> Path:
    """Copy the seed specfile into its own VM folder with a bootable disk at its fileName."""
    if hv.datastore.catalog.find(DEMO_NAME):
        if hv.get_vm(DEMO_NAME).state.value != "poweredOff":
            hv.stop_vm(DEMO_NAME, hard=True)
        hv.delete_vm(DEMO_NAME)
    folder = hv.datastore.root / DEMO_NAME
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700, parents=True)  # a VM folder is its owner's only
    vmx = folder / SEED_VMX
    doc = VmxDocument.parse(resources.files("minivisor.cli").joinpath("seed", SEED_VMX).read_bytes(), source=str(vmx))
    doc.save(vmx)
    spec = VmSpec.from_vmx(doc)
    hv.allow_path(image.parent)
    convert_disk(hv.datastore.image_chain(image, "the appliance"), folder / spec.boot_disk.file_name, "vmdk")
    hv.register_vm(vmx, DEMO_NAME)
    return vmx


# The Linux driver that binds each virtual device minivisor builds.
GUEST_DRIVERS = {"lsilogic": "sym53c8xx", "buslogic": "sym53c8xx", "lsisas1068": "mptsas", "pvscsi": "vmw_pvscsi",
                 "vmxnet3": "vmxnet3", "e1000": "e1000", "e1000e": "e1000e", "vlance": "pcnet32",
                 "virtio": "virtio_net"}


def _compare(spec: VmSpec, nics: tuple[dict, ...], inventory: dict) -> None:
    rows = []

    def row(what: str, asked: object, seen: object, expected: object = None) -> None:
        same = str(expected if expected is not None else asked) == str(seen)
        rows.append((what, asked, seen, "ok" if same else "differs"))

    row("memory (MiB)", spec.memory_mib, inventory["memory_mib"])
    row("cpus", spec.num_cpus, inventory["cpus"])
    controller = next(c for c in spec.controllers if c.name == spec.boot_disk.controller)
    boot = inventory["disks"][0] if inventory["disks"] else {}
    row(f"{controller.name} controller", controller.model, boot.get("controller"), GUEST_DRIVERS.get(controller.model))
    for nic, seen in zip(nics, inventory["nics"], strict=False):
        row(f"{nic['name']} MAC", nic["mac"], seen["mac"])
        row(f"{nic['name']} model", nic["model"], seen["driver"], GUEST_DRIVERS.get(nic["model"]))
        row(f"{nic['name']} link", f"network {nic['network']!r} unknown", "carrier" if seen.get("carrier") else
            "no carrier", "no carrier")
    table(("", "SPECFILE", "GUEST SEES", ""), rows)
