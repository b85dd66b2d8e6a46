"""The datastore browser: listing folders and files, and uploading an ISO, in the page and as an attacker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

from playwright.sync_api import expect

from minivisor import Hypervisor
from minivisor.service.connections import REQUEST_TIMEOUT

from .conftest import small_vm
from .test_web_browser import log_in
from .test_web_security import request


def upload(service, folder: str, name: str, body: bytes):
    status, _, answer = request(service, "PUT", f"/v1/datastore/files/{folder}/{name}",
                                {"Authorization": f"Bearer {service.token}",
                                 "Content-Type": "application/octet-stream"}, body)
    return status, json.loads(answer)


def test_upload_an_iso_in_the_page_and_see_it_in_the_datastore(service, page, tmp_path):
    small_vm(Hypervisor(service.root), "vm1")
    iso = tmp_path / "tiny.iso"
    iso.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    log_in(page, service)
    expect(page.locator("#datastore-files tr[data-file=vm1][data-kind=folder]")).to_be_visible()
    assert page.locator("#datastore-files tr[data-file='.minivisor']").count() == 0  # minivisor's own: hidden
    page.set_input_files("#upload-file", str(iso))
    page.click("button[data-action=upload]")
    row = page.locator("#datastore-files tr[data-file='tiny.iso']")
    expect(row).to_be_visible()
    expect(row.locator("td.size")).to_have_text("3.0 MiB")
    expect(page.locator("#datastore-where")).to_contain_text("/iso")
    assert (service.root / "iso" / "tiny.iso").read_bytes() == iso.read_bytes()
    assert page.evaluate("document.getElementById('upload-progress').value") == 1
    # the same name again: refused next to the button, the first file kept
    page.set_input_files("#upload-file", str(iso))
    page.click("button[data-action=upload]")
    expect(page.locator("#upload-error")).to_contain_text("already exists")
    assert (service.root / "iso" / "tiny.iso").read_bytes() == iso.read_bytes()


def test_uploads_cannot_leave_their_folder_or_overwrite_anything(service):
    small_vm(Hypervisor(service.root), "vm1")
    disk = (service.root / "vm1" / "vm1.qcow2").read_bytes()
    token = (service.root / ".minivisor" / "token").read_bytes()
    for folder, name in ((".minivisor", "x.iso"), ("vm1", "vm1.qcow2"), ("vm1", "new.vmdk"), ("vm1", "vm1.vmx"),
                         ("iso", "x.sh"),
                         ("iso", ".hidden.iso"), ("%2e%2e", "x.iso"), ("iso", "%2e%2e%2fx.iso"),
                         ("..", "x.iso"), ("iso", "token.iso%00.sh")):
        status, answer = upload(service, folder, name, b"payload")
        assert status in (404, 422), (folder, name, status, answer)
    assert (service.root / "vm1" / "vm1.qcow2").read_bytes() == disk
    assert (service.root / ".minivisor" / "token").read_bytes() == token
    assert not (service.root.parent / "x.iso").exists()
    assert not (service.root / "vm1" / "new.vmdk").exists()
    assert upload(service, "iso", "ok.iso", b"payload")[0] == 201
    assert upload(service, "vm1", "cd.iso", b"payload")[0] == 201  # a CD-ROM image for the VM itself
    status, answer = upload(service, "iso", "ok.iso", b"other")
    assert status == 409 and (service.root / "iso" / "ok.iso").read_bytes() == b"payload"


def test_the_listing_stays_inside_the_datastore(service):
    headers = {"Authorization": f"Bearer {service.token}"}
    for folder in ("..", "../..", "/etc", ".minivisor", "vm1/../..", "iso/../../"):
        status, _, body = request(service, "GET", "/v1/datastore/files?folder=" + json.dumps(folder), headers)
        assert status in (404, 422), (folder, status)
        assert b"passwd" not in body and b"catalog" not in body


def test_an_upload_may_take_longer_than_a_request_but_a_slow_unauthorized_one_may_not(service):
    sock = socket.create_connection((service.client.host, service.client.port), timeout=60)
    with sock:
        sock.sendall((f"PUT /v1/datastore/files/iso/slow.iso HTTP/1.1\r\nHost: {service.client.host}:"
                      f"{service.client.port}\r\nAuthorization: Bearer {service.token}\r\n"
                      f"Content-Length: 3\r\n\r\n").encode())
        for byte in b"abc":  # over more than the whole-request deadline
            time.sleep(REQUEST_TIMEOUT / 2 + 0.5)
            sock.sendall(bytes([byte]))
        assert sock.recv(4096).startswith(b"HTTP/1.1 201 ")
    assert (service.root / "iso" / "slow.iso").read_bytes() == b"abc"
    sock = socket.create_connection((service.client.host, service.client.port), timeout=60)
    with sock:  # without the token, the Gate answers at once and closes
        sock.sendall((f"PUT /v1/datastore/files/iso/x.iso HTTP/1.1\r\nHost: {service.client.host}:"
                      f"{service.client.port}\r\nContent-Length: 3000000\r\n\r\n").encode())
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401 ")
        while sock.recv(4096):
            pass  # closed by the service
    assert not (service.root / "iso" / "x.iso").exists()


def test_register_an_existing_specfile_from_the_datastore_browser(service, page):
    small_vm(Hypervisor(service.root), "kept")
    service.client.unregister_vm("kept")  # its folder stays, with its specfile
    log_in(page, service)
    page.click("#datastore-files tr[data-file=kept] button")
    row = page.locator("#datastore-files tr[data-file='kept.vmx']")
    row.locator("button[data-action=register]").click()
    expect(page.locator("tr[data-vm=kept] td.state")).to_have_attribute("data-state", "poweredOff")
    assert service.client.get_vm("kept").name == "kept"
    row.locator("button[data-action=register]").click()  # once more: it is in the inventory already
    expect(row.locator(".error")).to_contain_text("Register: ")
    assert [vm.name for vm in service.client.list_vms()] == ["kept"]


VMWARE_SPECFILE = ('.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "14"\ndisplayName = "Web server"\n'
                   'guestOS = "debian12-64"\nmemSize = "64"\nnumvcpus = "2"\nscsi0.present = "TRUE"\n'
                   'scsi0.virtualDev = "lsilogic"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "web.vmdk"\n')


def test_import_a_vmware_folder_from_the_datastore_browser(service, page):
    folder = service.root / "incoming" / "web"  # copied into the datastore as it came (scp, a share)
    folder.mkdir(parents=True)
    (folder / "web.vmx").write_text(VMWARE_SPECFILE)
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(folder / "web.vmdk"), "16M"], check=True)
    subprocess.run(["qemu-io", "-f", "vmdk", "-c", "write -P 0x77 1M 64k", str(folder / "web.vmdk")], check=True,
                   capture_output=True)
    log_in(page, service)
    page.click("#datastore-files tr[data-file=incoming] button")
    page.click("#datastore-files tr[data-file=web] button")
    row = page.locator("#datastore-files tr[data-file='web.vmx']")
    page.once("dialog", lambda dialog: dialog.accept("imported"))
    row.locator("button[data-action=import]").click()
    expect(page.locator("tr[data-vm=imported] td.state")).to_have_attribute("data-state", "poweredOff")
    vm = service.client.get_vm("imported")
    assert (vm.cpus, vm.memory_mib, vm.guest_os) == (2, 64, "debian12-64")
    disk = service.root / "imported" / "web.qcow2"  # converted, the original left as it was
    assert subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x77 1M 64k", str(disk)],
                          capture_output=True, text=True).stdout.count("read 65536/65536") == 1
    assert (folder / "web.vmdk").is_file() and (folder / "web.vmx").read_text() == VMWARE_SPECFILE
    task = page.locator("#tasks tr[data-operation=import_vm]")
    expect(task).to_have_attribute("data-state", "done")
    expect(task.locator("td").nth(2)).to_have_text("imported")
    # the same name again: refused next to the button, in words, and the task list says why
    page.once("dialog", lambda dialog: dialog.accept("imported"))
    row.locator("button[data-action=import]").click()
    expect(row.locator(".error")).to_contain_text("Import…: ")
    expect(row.locator(".error")).to_contain_text("imported")
    expect(page.locator("#tasks tr[data-operation=import_vm][data-state=failed]")).to_have_count(1)
    # declined: nothing is asked of the service
    page.once("dialog", lambda dialog: dialog.dismiss())
    row.locator("button[data-action=import]").click()
    page.wait_for_timeout(300)  # not a timing assertion: a call would have had time to be sent
    expect(page.locator("#tasks tr[data-operation=import_vm]")).to_have_count(2)
    assert [vm.name for vm in service.client.list_vms()] == ["imported"]
