"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from minivisor import dirs
from minivisor.appliance import build_appliance


@pytest.fixture(scope="session")
def appliance_image() -> Path:
    """The appliance disk image, built into (or taken from) the user's cache once per session."""
    return build_appliance(dirs.cache_dir())


@pytest.fixture
def hv(tmp_path):
    """A Hypervisor on a fresh datastore; VMs still running at the end are powered off."""
    from minivisor import Hypervisor
    from minivisor.state import VmState

    hypervisor = Hypervisor(tmp_path / "datastore")
    yield hypervisor
    for vm in hypervisor.list_vms():
        if vm.state in (VmState.RUNNING, VmState.PAUSED):
            hypervisor.stop_vm(vm.name, hard=True)
