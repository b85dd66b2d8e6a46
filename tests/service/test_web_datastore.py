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
    # both are tasks of the service: the first done, the second failed and why
    uploads = page.locator("#tasks tr[data-operation=upload]")
    expect(uploads).to_have_count(2)
    expect(uploads.nth(1)).to_have_attribute("data-state", "done")
    expect(uploads.nth(1)).to_contain_text("Upload tiny.iso")
    expect(uploads.nth(0)).to_have_attribute("data-state", "failed")
    expect(uploads.nth(0).locator(".task-status")).to_contain_text("already exists")


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


def test_an_upload_into_what_is_no_folder_or_leads_into_a_vms_folder_is_refused(service):
    """A file, a FIFO or a link to nothing in the folder's place was a 500 (FileExistsError); a link to a VM's
    folder let a disk image into it, where only a CD-ROM image may go (and none may be deleted from the page)."""
    small_vm(Hypervisor(service.root), "vm1")
    (service.root / "plain").write_bytes(b"x")
    os.mkfifo(service.root / "pipe")
    (service.root / "dangling").symlink_to(service.root / "nowhere")
    (service.root / "isos").symlink_to(service.root / "vm1")
    before = sorted(p.name for p in (service.root / "vm1").iterdir())
    for folder, name, words in (("plain", "x.iso", "not a folder"), ("pipe", "x.iso", "not a folder"),
                                ("dangling", "x.iso", "not a folder"), ("isos", "x.qcow2", "VM's folder")):
        status, answer = upload(service, folder, name, b"payload")
        assert status == 422 and words in answer["error"]["message"], (folder, status, answer)
    assert sorted(p.name for p in (service.root / "vm1").iterdir()) == before
    assert (service.root / "plain").read_bytes() == b"x" and not (service.root / "nowhere").exists()
    assert upload(service, "isos", "cd.iso", b"payload")[0] == 201  # a CD-ROM image, as into vm1 itself


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


def delete_file(service, folder: str, name: str):
    status, _, answer = request(service, "POST", "/v1/datastore/files/delete",
                                {"Authorization": f"Bearer {service.token}", "Content-Type": "application/json"},
                                json.dumps({"folder": folder, "name": name}).encode())
    return status, json.loads(answer)


def test_delete_a_file_in_the_datastore_browser_but_not_one_a_vm_uses(service, page):
    hv = Hypervisor(service.root)
    small_vm(hv, "vm1")
    (service.root / "iso").mkdir()
    (service.root / "iso" / "old.iso").write_bytes(b"iso")
    log_in(page, service)
    page.click("#datastore-files tr[data-file=iso] button")
    row = page.locator("#datastore-files tr[data-file='old.iso']")
    page.once("dialog", lambda dialog: dialog.dismiss())  # asked first: declined, kept
    row.locator("button[data-action=delete-file]").click()
    page.wait_for_timeout(300)  # not a timing assertion: a call would have had time to be sent
    assert (service.root / "iso" / "old.iso").exists()
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button[data-action=delete-file]").click()
    expect(row).to_have_count(0)
    assert not (service.root / "iso" / "old.iso").exists()
    # the VM's disk: refused next to its button, with the reason, and kept
    page.click("#datastore-files button.link >> text=../")
    page.click("#datastore-files tr[data-file=vm1] button")
    disk = page.locator("#datastore-files tr[data-file='vm1.qcow2']")
    page.once("dialog", lambda dialog: dialog.accept())
    disk.locator("button[data-action=delete-file]").click()
    expect(disk.locator(".error")).to_contain_text("Delete: ")
    expect(disk.locator(".error")).to_contain_text("folder of VM 'vm1'")
    assert (service.root / "vm1" / "vm1.qcow2").is_file()
    expect(page.locator("#tasks tr[data-operation=datastore_delete][data-state=failed]")).to_have_count(1)


def test_a_file_a_vm_uses_is_refused_and_one_it_does_not_is_deleted(service):
    hv = Hypervisor(service.root)
    hv.create_vm("vm1", disk_size="16M", memory_mib=64, network="none", cdrom=True)
    for name in ("setup.iso", "spare.iso"):
        (service.root / "vm1" / name).write_bytes(b"cd")
    service.client.cdrom("vm1", "setup.iso")
    hv.create_vm("vm2", disk_size="16M", memory_mib=64, network="none")
    service.client.snapshot_take("vm2", "s1")
    for folder, name, words in (("vm1", "setup.iso", "VM 'vm1' uses"), ("vm1", "vm1.vmx", "folder of VM 'vm1'"),
                                ("vm2", "vm2.qcow2", "folder of VM 'vm2'"), ("vm2", "vm2.vmsd", "folder of VM")):
        status, answer = delete_file(service, folder, name)
        assert status == 409 and words in answer["error"]["message"], (name, answer)
        assert (service.root / folder / name).is_file()
    assert delete_file(service, "vm1", "spare.iso")[0] == 200
    assert not (service.root / "vm1" / "spare.iso").exists()
    assert delete_file(service, "vm1", "spare.iso")[0] == 404


def test_deleting_cannot_reach_outside_the_datastore_nor_its_own_files(service, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.iso"
    secret.write_bytes(b"host file")
    token = service.root / ".minivisor" / "token"
    (service.root / "iso").mkdir()
    (service.root / "iso" / "away").symlink_to(outside)  # a folder link out
    (service.root / "iso" / "meta").symlink_to(service.root / ".minivisor")  # a folder link to minivisor's own
    (service.root / "iso" / "link.iso").symlink_to(secret)  # a file link out
    (service.root / "iso" / "sub").mkdir()
    attempts = [("..", "secret.iso"), ("../outside", "secret.iso"), (str(outside), "secret.iso"),
                ("iso", "../../outside/secret.iso"), ("iso/../..", "outside"), ("", "..", ), ("iso", "."),
                (".minivisor", "token"), ("iso/../.minivisor", "token"), ("iso/meta", "token"),
                ("iso/away", "secret.iso"), ("iso", "link.iso"), ("iso", "sub"), ("", "iso"),
                ("iso", "x\x00.iso"), ("iso", "/etc/passwd"), ("iso", "")]
    for folder, name in attempts:
        status, answer = delete_file(service, folder, name)
        assert status in (400, 404, 422), (folder, name, status, answer)
    assert secret.read_bytes() == b"host file"
    assert token.is_file() and (service.root / ".minivisor").is_dir()
    assert (service.root / "iso" / "link.iso").is_symlink() and (service.root / "iso" / "sub").is_dir()
    # the listing cannot follow a link into minivisor's own folder either
    status, _, body = request(service, "GET", "/v1/datastore/files?folder=" + json.dumps("iso/meta"),
                              {"Authorization": f"Bearer {service.token}"})
    assert status in (404, 422) and b"token" not in body and b"catalog" not in body
