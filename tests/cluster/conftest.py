"""Fixtures of the cluster tests: an etcd of three members, and minivisor hosts (see lab.py)."""

from __future__ import annotations

import shutil

import pytest
from lab import Etcd, Host

if shutil.which("etcd") is None:
    pytest.skip("etcd is not installed (Debian: apt-get install etcd-server etcd-client; ./setup.sh test does)",
                allow_module_level=True)


@pytest.fixture
def etcd(tmp_path):
    """Three etcd members on loopback, each with its own data directory; killed and removed at the end, pass or
    fail."""
    folder = tmp_path / "etcd"
    folder.mkdir()
    members = Etcd(folder)
    try:
        yield members.start()
    finally:
        members.close()
        shutil.rmtree(folder)


@pytest.fixture
def hosts(tmp_path):
    """``hosts("a", "b")``: minivisor hosts with datastores of their own; services and VMs ended, folders removed
    at the end."""
    made: list[Host] = []

    def make(*names: str) -> list[Host]:
        for name in names:
            folder = tmp_path / f"host-{name}"
            folder.mkdir()
            made.append(Host(name, folder))
        return made[-len(names):]

    try:
        yield make
    finally:
        trouble = [line for host in made for line in host.close()]
        for host in made:
            shutil.rmtree(host.root.parent)
        if trouble:
            pytest.fail("VMs left running that would not stop (killed): " + "; ".join(trouble))
