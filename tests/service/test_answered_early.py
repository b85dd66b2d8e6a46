"""A snapshot through the service is answered once it is durable, and its rest runs after the answer: what
every later call reads or changes on that VM (or on every VM, for a call that names none) waits for that rest.

The dispatcher is driven directly, with the real core and datastore, so the rest can be held back while other
calls arrive: they stay waiting until it has run, and then see the snapshot whole.
"""

from __future__ import annotations

import asyncio

from minivisor import Hypervisor
from minivisor.service.dispatch import Dispatcher
from minivisor.service.routes import by_name

from .conftest import small_vm


def test_calls_wait_for_the_rest_of_a_snapshot_answered_before_it(datastore):
    hv = Hypervisor(datastore)
    small_vm(hv, "vm1")
    small_vm(hv, "vm2")
    vmx = datastore / "vm1" / "vm1.vmx"
    before = vmx.read_bytes()

    async def scenario() -> None:
        calls = Dispatcher(datastore, on_event=lambda event: None)
        later: list = []
        snap = await calls.dispatch(by_name("snapshot_take"), {"name": "vm1"}, {"snapshot": "s1"}, later=later)
        assert snap.name == "s1" and len(later) == 1
        assert vmx.read_bytes() == before  # answered: the specfile is not written yet
        show = asyncio.create_task(calls.dispatch(by_name("get_vm"), {"name": "vm1"}, {}))
        listing = asyncio.create_task(calls.dispatch(by_name("list_vms"), {}, {}))
        snapshots = asyncio.create_task(calls.dispatch(by_name("snapshot_list"), {"name": "vm1"}, {}))
        second = asyncio.create_task(calls.dispatch(by_name("snapshot_take"), {"name": "vm1"}, {"snapshot": "s2"}))
        other = await calls.dispatch(by_name("get_vm"), {"name": "vm2"}, {})  # another VM does not wait
        assert other.name == "vm2"
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in (show, listing, snapshots, second))
        await later[0]()
        assert (await show).disks[0]["file"] == "vm1-000001.qcow2"
        assert {vm.name: vm.disks[0]["file"] for vm in await listing}["vm1"] == "vm1-000001.qcow2"
        assert [s["name"] for s in await snapshots] == ["s1"]
        assert (await second).parent == snap.uid  # without ``later`` it finished before it answered

    asyncio.run(scenario())
    assert [s["name"] for s in hv.snapshot_list("vm1")] == ["s1", "s2"]
    assert hv.get_vm("vm1").disks[0]["file"] == "vm1-000002.qcow2"
