"""Networks in the page: the host's networks listed, a refused creation said next to its button, and a VM's
port forwards added and removed by clicking. (The service's tests build no host networks: NAT is QEMU's
user-mode networking here; tests/net makes real ones in namespaces of their own.)"""

from __future__ import annotations

from playwright.sync_api import expect

from .test_web_browser import log_in


def test_the_networks_are_listed_and_a_refused_creation_says_why(service, page):
    log_in(page, service)
    expect(page.locator("#network-rows tr[data-network=nat]")).to_be_visible()
    before = [net.name for net in service.client.list_networks()]
    page.fill("#network-name", "lab")
    page.click("button[data-action=create-network]")
    expect(page.locator("#networks .create-network .error")).to_contain_text("Create network: ")
    assert [net.name for net in service.client.list_networks()] == before


def test_add_and_remove_a_port_forward_of_a_vm(service, page):
    service.client.create_vm("web", disk_size="16M", memory_mib=64)  # its NIC on nat
    log_in(page, service)
    page.click("button[data-action=open][data-vm=web]")
    page.click("#detail button[data-tab=network]")
    expect(page.locator("#vm-nics")).to_contain_text("ethernet0")
    page.fill("#forward-spec", "127.0.0.1:18123:22")
    page.click("button[data-action=add-forward]")
    item = page.locator("#forward-list li[data-forward='127.0.0.1:18123']")
    expect(item).to_contain_text("ethernet0 port 22")
    assert [(f["host_port"], f["guest_port"]) for f in service.client.port_forward_list("web")] == [(18123, 22)]
    page.fill("#forward-spec", "not a forward")
    page.click("button[data-action=add-forward]")
    expect(page.locator("#vm-forwards > p .error")).to_contain_text("Add port forward: ")
    item.locator("button[data-action=remove-forward]").click()
    expect(item).to_have_count(0)
    assert service.client.port_forward_list("web") == []
