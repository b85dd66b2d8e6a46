"""The snapshot tree in the page: take, revert, delete, and a linked clone from a snapshot, by clicking."""

from __future__ import annotations

from playwright.sync_api import expect

from minivisor import Hypervisor

from .conftest import small_vm
from .test_web_browser import log_in


def snapshot(page, name: str):
    return page.locator(f"#snapshot-tree li[data-snapshot={name}]")


def test_take_revert_delete_and_clone_snapshots_in_the_tree(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    log_in(page, service)
    page.click("button[data-action=open][data-vm=vm1]")
    page.click("#detail button[data-tab=snapshots]")
    expect(page.locator("#you-are-here")).to_be_visible()  # no snapshot yet: here, at the root
    for name in ("base", "later"):
        page.fill("#snapshot-name", name)
        page.click("button[data-action=take-snapshot]")
        expect(snapshot(page, name).locator(":scope > ul > #you-are-here")).to_be_visible()
    expect(snapshot(page, "base").locator("li[data-snapshot=later]")).to_be_visible()  # a child of base
    assert [s["name"] for s in service.client.snapshot_list("vm1")] == ["base", "later"]

    page.once("dialog", lambda dialog: dialog.accept())
    snapshot(page, "base").locator(":scope > div button[data-action=revert]").click()
    expect(snapshot(page, "base").locator(":scope > ul > #you-are-here")).to_be_visible()
    expect(snapshot(page, "later").locator("#you-are-here")).to_have_count(0)
    assert [s["name"] for s in service.client.snapshot_list("vm1") if s["current"]] == ["base"]

    page.once("dialog", lambda dialog: dialog.accept("fromsnap"))
    snapshot(page, "base").locator(":scope > div button[data-action=linked-clone]").click()
    expect(page.locator("tr[data-vm=fromsnap] td.state")).to_have_attribute("data-state", "poweredOff")
    clone = service.client.get_vm("fromsnap")
    assert clone.uuid != service.client.get_vm("vm1").uuid

    page.once("dialog", lambda dialog: dialog.accept())
    snapshot(page, "later").locator(":scope > div button[data-action=delete-snapshot]").click()
    expect(snapshot(page, "later")).to_have_count(0)
    assert [s["name"] for s in service.client.snapshot_list("vm1")] == ["base"]


def test_a_refused_snapshot_says_why_next_to_its_button(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    log_in(page, service)
    page.click("button[data-action=open][data-vm=vm1]")
    page.click("#detail button[data-tab=snapshots]")
    page.fill("#snapshot-name", "")  # no name
    page.click("button[data-action=take-snapshot]")
    expect(page.locator("#detail .take .error")).to_contain_text("Take snapshot: ")
    assert service.client.snapshot_list("vm1") == []


def test_the_tab_clicked_last_is_the_one_kept_up_to_date(service, page):
    """A tab whose code arrives after a later click's tab (a slow network) neither shows nor takes its updates."""
    small_vm(Hypervisor(service.root), "vm1")
    log_in(page, service)
    page.click("button[data-action=open][data-vm=vm1]")  # a powered-off VM opens on its snapshots
    expect(page.locator("#you-are-here")).to_be_visible()
    held = []
    page.route("**/graphs.js", lambda route: held.append(route))  # held back until released below
    page.click("#detail button[data-tab=graphs]")
    page.click("#detail button[data-tab=snapshots]")
    expect(page.locator("#you-are-here")).to_be_visible()
    page.wait_for_timeout(0)  # lets the route handler run
    assert len(held) == 1
    with page.expect_response("**/graphs.js"):
        held[0].continue_()
    page.fill("#snapshot-name", "base")
    page.click("button[data-action=take-snapshot]")
    expect(snapshot(page, "base").locator(":scope > ul > #you-are-here")).to_be_visible()
