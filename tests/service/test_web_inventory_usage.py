"""The inventory's disk and network columns: each disk's space used of its provisioned size (GET .../disks) and
each NIC's addresses, the guest's own from its agent (GET .../addresses)."""

from __future__ import annotations

import re

import pytest
from guests import create_guest, guest_address
from playwright.sync_api import expect

from minivisor import Hypervisor

from .conftest import small_vm
from .test_web_browser import log_in


def test_the_inventory_shows_what_each_disk_uses_of_its_size(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    (disk,) = service.client.vm_disks("vm1")
    assert disk["chain_allocated"] < 1024 * 1024 and disk["virtual_size"] == 16 * 1024 * 1024  # what is shown
    log_in(page, service)
    cell = page.locator("tr[data-vm=vm1] td.disks")
    expect(cell).to_have_attribute("data-filled", "true")
    expect(cell).to_have_text(re.compile(r"^scsi0:0 vm1\.qcow2 \d+(\.\d)? KiB / 16 MiB$"))
    expect(page.locator("tr[data-vm=vm1] td.nics")).to_have_attribute("data-filled", "true")


@pytest.mark.qemu
def test_the_inventory_shows_the_addresses_the_guest_reports(service, page, appliance_image):
    hv = Hypervisor(service.root)
    create_guest(hv, "ga", appliance_image, memory_mib=128, network="nat")
    service.client.start_vm("ga", wait_ready=True, timeout=90)
    service.client.exec_in_vm("ga", "true", via="agent")  # the guest starts its agent after its ready line
    guest_address(service.client, "ga")  # its DHCP client has its lease
    (nic,) = service.client.vm_addresses("ga")
    assert nic["guest"], nic
    log_in(page, service)
    cell = page.locator("tr[data-vm=ga] td.nics")
    expect(cell).to_contain_text("ethernet0 → nat · guest: " + ", ".join(nic["guest"]))
    (disk,) = service.client.vm_disks("ga")
    expect(page.locator("tr[data-vm=ga] td.disks")).to_contain_text(
        re.compile(re.escape(disk["node"]) + r" \S+ [\d.]+ (B|KiB|MiB|GiB) / [\d.]+ (MiB|GiB)"))
