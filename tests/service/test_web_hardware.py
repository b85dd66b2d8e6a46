"""The Hardware tab edits a VM through the API: CPUs and memory, a new disk, NICs, the CD-ROM; refusals by its form."""

from __future__ import annotations

import json
import subprocess

import pytest

from playwright.sync_api import expect

from minivisor import Hypervisor

from .conftest import small_vm
from .test_web_browser import log_in

COMMENT = "# kept by every edit\n"


def open_hardware(page, vm: str) -> None:
    page.click(f"button[data-action=open][data-vm={vm}]")
    page.click("#detail button[data-tab=hardware]")
    expect(page.locator("#hardware tr[data-device=machine]")).to_be_visible()


def form_of(page, action: str):
    return page.locator(f"#detail p.hw-form:has(button[data-action={action}])")


@pytest.mark.qemu  # explaining asks the KVM probe which accelerator the VM gets
def test_cpus_memory_a_disk_nics_and_the_cdrom_changed_in_the_hardware_tab(service, page):
    hv = Hypervisor(service.root)
    hv.create_vm("vm1", disk_size="16M", memory_mib=64, network="none", cdrom=True)
    vmx = service.root / "vm1" / "vm1.vmx"
    vmx.write_text(COMMENT + vmx.read_text())
    (service.root / "vm1" / "setup.iso").write_bytes(b"\0" * 65536)
    log_in(page, service)
    open_hardware(page, "vm1")

    page.fill("#hw-cpus", "2")
    page.fill("#hw-memory", "96")
    page.click("button[data-action=set-resources]")
    expect(page.locator("tr[data-vm=vm1] td.memory")).to_have_text("96 MiB")
    vm = service.client.get_vm("vm1")
    assert (vm.cpus, vm.memory_mib) == (2, 96)

    page.fill("#hw-disk-size", "24M")
    page.click("button[data-action=add-disk]")
    expect(page.locator("#hardware tr[data-device='scsi0:1']")).to_be_visible()
    disk = service.root / "vm1" / "vm1_scsi0-1.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(disk)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["virtual-size"] == 24 * 2**20

    page.select_option("#hw-nic-model", "e1000")
    page.click("button[data-action=add-nic]")
    expect(page.locator("#hw-nic-remove option")).to_have_text(["ethernet0"])
    assert [(n["name"], n["model"], n["network"]) for n in service.client.get_vm("vm1").nics] == \
        [("ethernet0", "e1000", "nat")]
    page.select_option("#cdrom-image", label="setup.iso")
    page.click("button[data-action=cdrom-insert]")
    expect(page.locator("#hardware tr[data-device='ide1:0']")).to_contain_text("setup.iso")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=remove-nic]")
    expect(page.locator("#hw-nic-remove option")).to_have_count(0)
    assert service.client.get_vm("vm1").nics == ()
    text = vmx.read_text()
    assert text.startswith(COMMENT)  # the specfile was edited, not rewritten
    assert 'scsi0:1.fileName = "vm1_scsi0-1.qcow2"' in text and 'numvcpus = "2"' in text
    assert all(form_of(page, a).locator(".error").inner_text() == ""
               for a in ("set-resources", "add-disk", "add-nic", "remove-nic"))


@pytest.mark.qemu  # explaining asks the KVM probe which accelerator the VM gets
def test_a_refused_hardware_edit_says_why_by_its_form_and_changes_nothing(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    vmx = service.root / "vm1" / "vm1.vmx"
    log_in(page, service)
    open_hardware(page, "vm1")
    before = vmx.read_bytes()
    page.fill("#hw-cpus", "0")
    page.click("button[data-action=set-resources]")
    expect(form_of(page, "set-resources").locator(".error")).to_contain_text("Apply: field 'cpus'")
    page.fill("#hw-cpus", "1")
    page.fill("#hw-memory", str(1024 * 1024))  # 1 TiB: a size VMware allows, more than this host has
    page.click("button[data-action=set-resources]")
    expect(form_of(page, "set-resources").locator(".error")).to_contain_text("memory")
    page.fill("#hw-disk-size", "lots")
    page.click("button[data-action=add-disk]")
    expect(form_of(page, "add-disk").locator(".error")).to_contain_text("Add disk: ")
    assert vmx.read_bytes() == before
    assert sorted(p.name for p in vmx.parent.glob("*.qcow2")) == ["vm1.qcow2"]


@pytest.mark.qemu  # explaining asks the KVM probe which accelerator the VM gets
def test_a_running_vm_keeps_its_cpus_memory_and_disks(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    service.client.start_vm("vm1")
    vmx = service.root / "vm1" / "vm1.vmx"
    before = vmx.read_bytes()
    log_in(page, service)
    open_hardware(page, "vm1")
    page.fill("#hw-cpus", "2")
    page.click("button[data-action=set-resources]")
    expect(form_of(page, "set-resources").locator(".error")).to_contain_text("running")
    page.click("button[data-action=add-disk]")
    expect(form_of(page, "add-disk").locator(".error")).to_contain_text("running")
    assert vmx.read_bytes() == before
    assert sorted(p.name for p in vmx.parent.glob("*.qcow2")) == ["vm1.qcow2"]
