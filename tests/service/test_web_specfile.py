"""The Specfile tab: a powered-off VM's specfile edited in the page, saved through PUT /v1/vms/{name}/specfile;
what the service refuses is shown next to the editor with its line, and nothing is written. The REST route's
own refusals (a stale stamp, a body too large) are here too."""

from __future__ import annotations

import json

from playwright.sync_api import expect

from minivisor import Hypervisor
from minivisor.service.app import MAX_BODY

from .conftest import small_vm
from .test_rest_api import auth, raw
from .test_web_browser import log_in


def open_specfile(page, service, vm: str) -> None:
    log_in(page, service)
    page.click(f"button[data-action=open][data-vm={vm}]")
    page.click("#detail button[data-tab=specfile]")
    expect(page.locator("#specfile-text")).to_have_value((service.root / vm / f"{vm}.vmx").read_text())


def test_edit_the_memory_of_a_powered_off_vm_and_see_it_in_the_inventory(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    open_specfile(page, service, "vm1")
    expect(page.locator("tr[data-vm=vm1] td.memory")).to_have_text("64 MiB")
    text = page.locator("#specfile-text").input_value()
    edited = text.replace('memSize = "64"', 'memSize = "96"  # edited in the page')
    page.fill("#specfile-text", edited)
    page.click("button[data-action=save-specfile]")
    expect(page.locator("#specfile-status")).to_contain_text("Saved.")
    expect(page.locator("tr[data-vm=vm1] td.memory")).to_have_text("96 MiB")  # from the event stream
    assert (service.root / "vm1" / "vm1.vmx").read_text() == edited
    assert service.client.get_vm("vm1").memory_mib == 96
    expect(page.locator("#specfile-status")).to_contain_text("Saved.")  # its own save does not reload the editor
    # saved elsewhere (the CLI, another page): the untouched editor shows the new file
    read = service.client.get_specfile("vm1")
    service.client.put_specfile("vm1", read["text"].replace('"96"', '"112"'), read["stamp"])
    expect(page.locator("#specfile-text")).to_have_value(read["text"].replace('"96"', '"112"'))
    expect(page.locator("tr[data-vm=vm1] td.memory")).to_have_text("112 MiB")


def test_a_bad_line_is_shown_with_its_number_and_nothing_is_written(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    vmx = service.root / "vm1" / "vm1.vmx"
    before = vmx.read_bytes()
    open_specfile(page, service, "vm1")
    lines = page.locator("#specfile-text").input_value().split("\n")
    line = lines.index('memSize = "64"') + 1
    lines[line - 1] = 'memSize = "64" -m 99999"'
    page.fill("#specfile-text", "\n".join(lines))
    page.click("button[data-action=save-specfile]")
    error = page.locator("#specfile-error")
    expect(error).to_contain_text(f"Line {line}: ")
    expect(error).to_have_attribute("data-line", str(line))
    expect(page.locator("#specfile-lines .error-line")).to_have_text(str(line))
    assert vmx.read_bytes() == before
    # fixed, it saves
    lines[line - 1] = 'memSize = "80"'
    page.fill("#specfile-text", "\n".join(lines))
    page.click("button[data-action=save-specfile]")
    expect(page.locator("#specfile-status")).to_contain_text("Saved.")
    expect(error).to_be_empty()
    assert 'memSize = "80"' in vmx.read_text()


def test_the_rest_route_refuses_a_stale_stamp_a_disk_outside_and_a_huge_body(service):
    small_vm(Hypervisor(service.root), "vm1")
    vmx = service.root / "vm1" / "vm1.vmx"
    read = service.client.get_specfile("vm1")
    service.client.put_specfile("vm1", read["text"].replace('memSize = "64"', 'memSize = "72"'), read["stamp"])
    after = vmx.read_bytes()

    def put(body: bytes) -> tuple[int, dict]:
        return raw(service, "PUT", "/v1/vms/vm1/specfile", body, auth(service))

    status, data = put(json.dumps({"text": read["text"], "stamp": read["stamp"]}).encode())
    assert (status, data["error"]["code"]) == (409, "conflict")
    fresh = service.client.get_specfile("vm1")
    shadow = fresh["text"].replace('scsi0:0.fileName = "vm1.qcow2"', 'scsi0:0.fileName = "/etc/shadow"')
    status, data = put(json.dumps({"text": shadow, "stamp": fresh["stamp"]}).encode())
    assert (status, data["error"]["code"]) == (422, "path-unsafe")
    assert data["error"]["details"]["line"] == fresh["text"].splitlines().index('scsi0:0.fileName = "vm1.qcow2"') + 1
    status, data = put(json.dumps({"text": fresh["text"] + "#" * MAX_BODY, "stamp": fresh["stamp"]}).encode())
    assert (status, data["error"]["code"]) == (413, "too-large")
    assert vmx.read_bytes() == after


def test_a_crlf_specfile_keeps_its_line_breaks_through_the_editor(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    vmx = service.root / "vm1" / "vm1.vmx"
    crlf = vmx.read_bytes().replace(b"\n", b"\r\n")  # as VMware writes it on Windows
    vmx.write_bytes(crlf)
    log_in(page, service)
    page.click("button[data-action=open][data-vm=vm1]")
    page.click("#detail button[data-tab=specfile]")
    expect(page.locator("#specfile-text")).to_have_value(crlf.decode().replace("\r\n", "\n"))  # the browser's
    page.click("button[data-action=save-specfile]")  # saved as read: byte for byte
    expect(page.locator("#specfile-status")).to_contain_text("Saved.")
    assert vmx.read_bytes() == crlf
    text = page.locator("#specfile-text").input_value()
    page.fill("#specfile-text", text.replace('memSize = "64"', 'memSize = "80"') + 'annotation = "new line"\n')
    page.click("button[data-action=save-specfile]")
    expect(page.locator("tr[data-vm=vm1] td.memory")).to_have_text("80 MiB")
    assert vmx.read_bytes() == crlf.replace(b'memSize = "64"', b'memSize = "80"') + b'annotation = "new line"\r\n'


def test_a_specfile_saved_while_the_event_stream_stalled_is_shown_once_the_page_reconnects(service, page):
    """The network gone under the page (a laptop's sleep): its event stream stays open and silent, so the page
    misses what changes. Silent past two of the service's keep-alives, it is given up; the page reconnects and
    reads again what it shows: the open specfile too, not only the inventory."""
    page.clock.install()  # the page's timers, run forward below instead of waited for
    small_vm(Hypervisor(service.root), "vm1")
    open_specfile(page, service, "vm1")
    page.context.set_offline(True)
    read = service.client.get_specfile("vm1")
    changed = read["text"].replace('memSize = "64"', 'memSize = "80"')
    service.client.put_specfile("vm1", changed, read["stamp"])
    page.wait_for_timeout(300)
    page.context.set_offline(False)
    expect(page.locator("#specfile-text")).not_to_have_value(changed, timeout=2_000)  # unseen: the stream stalled
    page.clock.run_for(45_000)  # the stalled stream given up
    page.clock.run_for(3_000)  # the pause before reconnecting
    expect(page.locator("#specfile-text")).to_have_value(changed)
    expect(page.locator("tr[data-vm=vm1] td.memory")).to_have_text("80 MiB")


def test_a_change_made_elsewhere_is_drawn_from_one_read_so_typing_meanwhile_is_not_lost(service, page):
    """The file changed elsewhere: the open editor shows it from the one read that found it changed, with no second
    read in between during which what the user types would be drawn over (a second read is held here, forever)."""
    small_vm(Hypervisor(service.root), "vm1")
    open_specfile(page, service, "vm1")
    reads, held = [], []

    def second_read_held(route) -> None:
        if route.request.method == "GET":
            reads.append(route)
            if len(reads) >= 2:
                held.append(route)
                return
        route.continue_()

    page.route("**/v1/vms/vm1/specfile", second_read_held)
    read = service.client.get_specfile("vm1")
    changed = read["text"].replace('memSize = "64"', 'memSize = "80"')
    service.client.put_specfile("vm1", changed, read["stamp"])  # elsewhere: its event makes the page read it
    expect(page.locator("#specfile-text")).to_have_value(changed)
    page.fill("#specfile-text", changed + 'annotation = "typed"\n')
    for route in held:
        route.continue_()
    page.wait_for_timeout(500)
    expect(page.locator("#specfile-text")).to_have_value(changed + 'annotation = "typed"\n')
