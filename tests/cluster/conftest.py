"""Fixtures of the cluster tests: an etcd of three members, and minivisor hosts (see lab.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from lab import Etcd, Fabric, Host

if shutil.which("etcd") is None:
    pytest.skip("etcd is not installed (Debian: apt-get install etcd-server etcd-client; ./setup.sh test does)",
                allow_module_level=True)


@contextmanager
def running_etcd(folder: Path, **where: str) -> Iterator[Etcd]:
    """Three etcd members (on loopback, or ``where``: see lab.Etcd), their data directories in ``folder``; killed
    and ``folder`` removed at the end, pass or fail."""
    members = Etcd(folder, **where)
    try:
        yield members.start()
    finally:
        members.close()
        shutil.rmtree(folder)


@pytest.fixture
def etcd(tmp_path):
    """Three etcd members on loopback, each with its own data directory; killed and removed at the end, pass or
    fail."""
    folder = tmp_path / "etcd"
    folder.mkdir()
    with running_etcd(folder) as members:
        yield members


@pytest.fixture(scope="module")
def module_etcd(tmp_path_factory):
    """Three etcd members on loopback for a module's fixture that several tests share (a host in a cluster that
    each test leaves as it found it); killed and removed after the module, pass or fail."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as members:
        yield members


@pytest.fixture
def hosts(tmp_path):
    """``hosts("a", "b")``: minivisor hosts with datastores of their own; services and VMs ended, folders removed
    at the end."""
    made: list[Host] = []

    def make(*names: str, fabric: Fabric | None = None) -> list[Host]:
        """Hosts named ``names``; on ``fabric``, each in a network namespace of its own."""
        for name in names:
            folder = tmp_path / f"host-{name}"
            folder.mkdir()
            made.append(Host(name, folder, fabric.host_namespace(len(made) + 1) if fabric else None))
        return made[-len(names):]

    try:
        yield make
    finally:
        trouble = [line for host in made for line in host.close()]
        for host in made:
            shutil.rmtree(host.root.parent)
        if trouble:
            pytest.fail("VMs left running that would not stop (killed): " + "; ".join(trouble))


@pytest.fixture
def fabric(request):
    """Network namespaces of the test's own, a bridge between them (see lab.Fabric); deleted at the end, with every
    process in them, pass or fail. Their names begin with the test module's ``NETNS_PREFIX`` [default: mvcl]."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a partition needs network namespaces: root and iproute2")
    made = Fabric(getattr(request.module, "NETNS_PREFIX", "mvcl"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def fabric_etcd(fabric, tmp_path):
    """Three etcd members inside the fabric's namespace, on its bridge's address."""
    folder = tmp_path / "etcd"
    folder.mkdir()
    with running_etcd(folder, netns=fabric.fabric, address=f"{Fabric.SUBNET}.1") as members:
        yield members
