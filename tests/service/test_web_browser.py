"""The web page in Debian's headless Chromium, driven by Playwright: log in, click the power buttons.

Each test leaves a screenshot in build/screenshots/ (git-ignored).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from minivisor import Hypervisor
from minivisor.vmm.states import VmState

from .conftest import small_vm


@pytest.mark.qemu
def test_power_a_vm_on_and_off_by_clicking_in_the_page(service, page):
    small_vm(Hypervisor(service.root), "vm1")
    page.goto(service.url + "/")
    page.fill("#token", service.token)
    page.click("#login button")
    page.click("button[data-action=start][data-vm=vm1]")
    expect(page.locator("tr[data-vm=vm1] td[data-state]")).to_have_attribute("data-state", "running")
    assert service.client.get_vm("vm1").state is VmState.RUNNING
    expect(page.locator("#events")).to_contain_text("poweredOn")
    # the token was typed once: a reload goes straight to the list
    page.reload()
    expect(page.locator("button[data-action=stop][data-vm=vm1]")).to_be_visible()
    assert page.locator("#login").is_hidden()
    page.click("button[data-action=stop][data-vm=vm1]")
    expect(page.locator("tr[data-vm=vm1] td[data-state]")).to_have_attribute("data-state", "poweredOff")
    assert service.client.get_vm("vm1").state is VmState.POWERED_OFF


def test_a_wrong_token_shows_the_login_again(service, page):
    page.goto(service.url + "/")
    page.fill("#token", "wrong")
    page.click("#login button")
    expect(page.locator("#error")).to_contain_text("missing or wrong token")
    assert page.locator("#login").is_visible()
