"""The task list: the service's running and recent operations, their progress from the core and their errors,
in GET /v1/tasks, on the event stream and in the page."""

from __future__ import annotations

import json
import subprocess

from playwright.sync_api import expect

from minivisor import Hypervisor

from .conftest import EventWatcher, small_vm
from .test_web_browser import log_in
from .test_web_security import request


def task_events(watcher: EventWatcher) -> list[dict]:
    """The task events received so far."""
    seen = []
    while not watcher.events.empty():
        event = watcher.events.get()
        if event["type"] == "task":
            seen.append(event["task"])
    return seen


def vm_with_data(hv: Hypervisor, name: str, mib: int) -> None:
    """A small VM whose disk holds ``mib`` MiB of written data: a full clone copies it, reporting progress."""
    small_vm(hv, name)
    hv.datastore.root.joinpath(name, f"{name}.qcow2").unlink()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(hv.datastore.root / name / f"{name}.qcow2"),
                    f"{mib}M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {mib}M",
                    str(hv.datastore.root / name / f"{name}.qcow2")], check=True, capture_output=True)


def test_a_full_clone_shows_its_progress_and_a_failed_one_its_error(service, page):
    hv = Hypervisor(service.root)
    vm_with_data(hv, "big", 96)
    service.client.snapshot_take("big", "base")  # a full clone of the snapshot flattens its chain: qemu-img -p
    log_in(page, service)
    watcher = EventWatcher(service.client)
    try:
        page.click("button[data-action=open][data-vm=big]")
        page.click("#detail button[data-tab=snapshots]")
        page.once("dialog", lambda dialog: dialog.accept("copy"))
        page.locator("#snapshot-tree li[data-snapshot=base] button[data-action=full-clone]").click()
        done = page.locator("#tasks tr[data-operation=clone_vm][data-state=done]")
        expect(done).to_have_count(1)
        expect(done).to_contain_text("Clone copy")
        expect(done.locator("td").nth(2)).to_have_text("big")
        expect(done.locator(".task-status")).to_contain_text("done in ")
        clone = [task for task in task_events(watcher) if task["operation"] == "clone_vm"]
    finally:
        watcher.close()
    assert clone[0]["state"] == "running" and clone[-1]["state"] == "done"
    assert len({task["id"] for task in clone}) == 1
    measured = [task["progress"] for task in clone if task["state"] == "running"]
    assert any(0 < percent < 100 for percent in measured), measured  # the core's progress, on its way
    assert measured == sorted(measured)
    assert clone[-1]["progress"] == 100 and clone[-1]["error"] is None
    assert (service.root / "copy" / "copy.qcow2").stat().st_size > 90 * 2**20

    # the same again: the name is taken, the task fails with the API's words, in the page and in GET /v1/tasks
    page.once("dialog", lambda dialog: dialog.accept("copy"))
    page.locator("#snapshot-tree li[data-snapshot=base] button[data-action=full-clone]").click()
    failed = page.locator("#tasks tr[data-operation=clone_vm][data-state=failed]")
    expect(failed).to_have_count(1)
    expect(failed.locator(".task-status")).to_contain_text("failed after ")
    expect(failed.locator(".task-status")).to_contain_text("copy")
    status, _, body = request(service, "GET", "/v1/tasks", {"Authorization": f"Bearer {service.token}"})
    tasks = json.loads(body)
    assert status == 200, body
    assert [t["state"] for t in tasks if t["operation"] == "clone_vm"] == ["failed", "done"]  # newest first
    assert "already" in tasks[0]["error"] or "exists" in tasks[0]["error"], tasks[0]
    assert tasks[0]["error"] in failed.locator(".task-status").inner_text()


def test_tasks_of_other_clients_and_reads_that_are_not_tasks(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    log_in(page, service)
    service.client.set_autostart("vm1", True)  # a change through the API (as the CLI makes it): a task
    row = page.locator("#tasks tr[data-operation=set_autostart]")
    expect(row).to_have_attribute("data-state", "done")
    expect(row.locator("td").nth(2)).to_have_text("vm1")
    service.client.get_vm("vm1")  # reads are not tasks
    service.client.list_vms()
    status, _, body = request(service, "GET", "/v1/tasks", {"Authorization": f"Bearer {service.token}"})
    assert status == 200
    assert b"get_vm" not in body and b"list_vms" not in body
    status, _, body = request(service, "GET", "/v1/tasks", {})  # the list is the API's: no token, nothing
    assert status == 401 and b"set_autostart" not in body
