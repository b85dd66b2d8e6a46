"""The web page in Debian's headless Chromium, driven by Playwright: log in, the inventory, the power buttons.

Each test leaves a screenshot in build/screenshots/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from minivisor import Hypervisor
from minivisor.vmm.states import VmState

from .conftest import small_vm


def log_in(page, service) -> None:
    page.goto(service.url + "/")
    page.fill("#token", service.token)
    page.click("#login button")
    expect(page.locator("#main")).to_be_visible()


def state_of(page, vm: str):
    return page.locator(f"tr[data-vm={vm}] td.state")


@pytest.mark.qemu
def test_power_a_vm_on_and_off_by_clicking_in_the_page(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    log_in(page, service)
    expect(page.locator("tr[data-vm=vm1] td").nth(2)).to_have_text("other-64")
    page.click("button[data-action=start][data-vm=vm1]")
    expect(state_of(page, "vm1")).to_have_attribute("data-state", "running")
    assert service.client.get_vm("vm1").state is VmState.RUNNING
    expect(page.locator("#events")).to_contain_text("poweredOn")
    expect(page.locator("#host")).to_have_attribute("data-running", "1")  # the host line counts it
    expect(page.locator("#host")).to_contain_text(re.compile(r"\d+ CPUs, load [\d.]+ .* free of [\d.]+ GiB"))
    # a single host: no Cluster section, no Host column, no Migrate action (GET /v1/cluster said so)
    expect(page.locator("#inventory th.cluster-only")).to_be_hidden()
    expect(page.locator("tr[data-vm=vm1] td.host")).to_be_hidden()
    assert page.locator("#cluster").inner_html() == "" and page.locator("select.migrate-host").count() == 0
    # logged in once: a reload keeps the session (the cookie), and the page never saw the cookie itself
    page.reload()
    expect(page.locator("button[data-action=pause][data-vm=vm1]")).to_be_visible()
    assert page.locator("#login").is_hidden()
    assert page.evaluate("document.cookie") == ""
    page.click("button[data-action=pause][data-vm=vm1]")
    expect(state_of(page, "vm1")).to_have_attribute("data-state", "paused")
    expect(page.locator("#tasks tr").first).to_have_attribute("data-state", "done")
    expect(page.locator("#tasks tr").first).to_contain_text("Pause")
    page.click("button[data-action=resume][data-vm=vm1]")
    expect(state_of(page, "vm1")).to_have_attribute("data-state", "running")
    # power off asks first: declined, nothing happens
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("button[data-action=poweroff][data-vm=vm1]")
    page.wait_for_timeout(300)  # not a timing assertion: a refused call would have had time to be sent
    assert service.client.get_vm("vm1").state is VmState.RUNNING
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=poweroff][data-vm=vm1]")
    expect(state_of(page, "vm1")).to_have_attribute("data-state", "poweredOff")
    assert service.client.get_vm("vm1").state is VmState.POWERED_OFF


def test_a_change_made_elsewhere_appears_on_the_page_from_the_event_stream(service, page):
    log_in(page, service)
    expect(page.locator("tr[data-vm]")).to_have_count(0)
    service.client.create_vm("born", disk_size="16M", memory_mib=64, network="none")
    expect(page.locator("tr[data-vm=born] td.state")).to_have_attribute("data-state", "poweredOff")
    expect(page.locator("#datastore-files tr[data-file=born][data-kind=folder]")).to_be_visible()
    service.client.delete_vm("born")
    expect(page.locator("tr[data-vm=born]")).to_have_count(0)


def test_a_refused_action_says_why_next_to_the_button(service, page):
    hv = Hypervisor(service.root)
    small_vm(hv, "broken")
    (service.root / "broken" / "broken.qcow2").unlink()  # it cannot power on
    for i in range(3):
        small_vm(hv, f"other{i}")
    log_in(page, service)
    page.click("button[data-action=start][data-vm=broken]")
    error = page.locator("tr[data-vm=broken] td.actions .error")
    expect(error).to_contain_text("Power on: ")
    expect(error).to_contain_text("broken.qcow2")
    assert page.locator("tr[data-vm=other0] .error").inner_text() == ""
    # and the task list keeps it, with why
    failed = page.locator("#tasks tr[data-state=failed]")
    expect(failed).to_have_count(1)
    expect(failed.locator(".task-status")).to_contain_text("broken.qcow2")
    assert service.client.get_vm("broken").state is VmState.POWERED_OFF


def test_names_from_specfiles_are_text_never_html(service, page):
    hv = Hypervisor(service.root)
    small_vm(hv, "evil")
    vmx = service.root / "evil" / "evil.vmx"
    vmx.write_text(vmx.read_text().replace('guestOS = "other-64"', 'guestOS = "<img src=x onerror=alert(1)>"'))
    log_in(page, service)
    page.on("dialog", lambda dialog: pytest.fail("a specfile's text ran as script"))
    expect(page.locator("tr[data-vm=evil] td").nth(2)).to_have_text("<img src=x onerror=alert(1)>")
    assert page.locator("img").count() == 0


def test_a_wrong_token_shows_the_login_again(service, page):
    page.goto(service.url + "/")
    page.fill("#token", "wrong")
    page.click("#login button")
    expect(page.locator("#login-error")).to_contain_text("missing or wrong token")
    assert page.locator("#login").is_visible() and page.locator("#main").is_hidden()
    assert page.context.cookies() == []


def test_create_a_vm_from_the_wizard(service, page):
    log_in(page, service)
    page.click("#new-vm")
    page.fill("#new-name", "made-here")
    page.fill("#new-guest-os", "debian12-64")
    page.fill("#new-cpus", "2")
    page.fill("#new-memory", "96")
    page.fill("#new-disk", "32M")
    page.select_option("#new-network", "none")
    page.click("button[data-action=create]")
    expect(page.locator("tr[data-vm=made-here] td.state")).to_have_attribute("data-state", "poweredOff")
    expect(page.locator("#create")).to_be_hidden()  # once the call has answered (the row may come first)
    vm = service.client.get_vm("made-here")
    assert (vm.guest_os, vm.cpus, vm.memory_mib, vm.nics) == ("debian12-64", 2, 96, ())
    assert (service.root / "made-here" / "made-here.qcow2").is_file()
    assert service.client.get_vm("made-here").disks[1]["kind"] == "cdrom"  # an empty drive by default
    # a name already taken: said next to the Create button, and nothing is made
    page.click("#new-vm")
    page.fill("#new-name", "made-here")
    page.click("button[data-action=create]")
    expect(page.locator("#create .error")).to_contain_text("Create: ")
    expect(page.locator("#create .error")).to_contain_text("made-here")
    assert [vm.name for vm in service.client.list_vms()] == ["made-here"]


@pytest.mark.qemu
def test_the_graphs_of_a_running_vm_come_from_its_metrics(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    service.client.start_vm("vm1")
    log_in(page, service)
    page.click("button[data-action=open][data-vm=vm1]")
    page.click("#detail button[data-tab=graphs]")
    for graph in ("cpu", "memory", "disk", "network"):
        expect(page.locator(f"#detail .graph[data-graph={graph}] canvas")).to_be_visible()
    expect(page.locator("#detail .tab-body")).to_have_attribute("data-samples", re.compile(r"^[3-9]|\d\d"))
    rss_mib = service.client.metrics()["vms"]["vm1"]["memory_rss_bytes"] / 1048576
    shown = float(page.locator("#detail .tab-body").get_attribute("data-memory-mib"))
    assert 0.5 * rss_mib < shown < 2 * rss_mib  # the VMM's memory, as /v1/metrics has it


@pytest.mark.qemu  # explaining asks the KVM probe which accelerator the VM gets
def test_the_hardware_tab_shows_the_devices_and_the_exact_command_line(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    log_in(page, service)
    page.click("button[data-action=open][data-vm=vm1]")
    page.click("#detail button[data-tab=hardware]")
    expect(page.locator("#hardware tr[data-device=machine]")).to_contain_text("i440FX")
    argv = service.client.explain_vm("vm1").argv
    expect(page.locator("#argv")).to_have_text(" ".join(argv))


def test_the_wizard_makes_a_thick_uefi_vm_with_an_installer_in_its_cd_drive(service, page, tmp_path):
    iso = tmp_path / "installer.iso"
    iso.write_bytes(b"CD" * 300_000)
    log_in(page, service)
    page.click("#new-vm")
    page.fill("#new-name", "installing")
    page.fill("#new-memory", "64")
    page.fill("#new-disk", "16M")
    page.check("#new-thick")
    page.select_option("#new-firmware", "efi")
    page.select_option("#new-network", "none")
    page.set_input_files("#new-iso", str(iso))
    page.click("button[data-action=create]")
    expect(page.locator("#create")).to_be_hidden()
    expect(page.locator("tr[data-vm=installing] td.disks")).to_contain_text("installer.iso")
    folder = service.root / "installing"
    assert (folder / "installer.iso").read_bytes() == iso.read_bytes()
    assert (folder / "installing.qcow2").stat().st_blocks * 512 >= 16 * 1024 * 1024  # allocated: thick
    text = (folder / "installing.vmx").read_text()
    assert 'firmware = "efi"' in text and 'ide1:0.fileName = "installer.iso"' in text
