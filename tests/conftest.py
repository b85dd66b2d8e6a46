"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from netlab import end_lab, make_lab
from qemu_crashes import KernelLog
from vmm_guard import end_qemus_under, power_off_all

from minivisor import dirs
from minivisor_appliance.build import build_appliance

# Tests build no networks on the host: NAT is QEMU's user-mode networking, other NICs have their links down.
# Network tests (tests/net) run minivisor inside network namespaces they create, with this set otherwise there.
os.environ["MINIVISOR_NETWORKING"] = "user"
# A command that finds no service starts one for the commands after it (minivisor.service.on_demand). Tests run each
# command as they mean it, by itself or through a service they start; tests/service/test_on_demand.py tests that one.
os.environ["MINIVISOR_ON_DEMAND"] = "off"

# Property tests prove what they prove by their examples, not by their speed: on a loaded
# 2-core machine a slow example must be neither a failure (deadline) nor a reason to give up
# (too_slow health checks). max_examples stays as each test sets it.
settings.register_profile("minivisor", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("minivisor")


KERNEL_LOG = KernelLog()


def pytest_collection_modifyitems(items):
    """A ``qemu`` test that fails while the kernel logs a crash of QEMU runs once more (see tests/qemu_crashes.py)."""
    for item in items:
        if item.get_closest_marker("qemu"):
            item.add_marker(pytest.mark.flaky(reruns=1, condition=_run_again))


def _run_again(error: BaseException | None) -> bool:
    crashes = KERNEL_LOG.qemu_crashes()
    for crash in crashes:
        print(f"\nQEMU crashed while this test ran (it runs once more): {crash}")
    return bool(crashes)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    KERNEL_LOG.mark()


@pytest.fixture(scope="session")
def appliance_image() -> Path:
    """The appliance disk image, built into (or taken from) the user's cache once per session."""
    return build_appliance(dirs.cache_dir())


@pytest.fixture
def lab(tmp_path):
    """A pair of network namespaces of the test's own, running minivisor (see tests/netlab.py); removed after."""
    made = make_lab(tmp_path / "datastore")
    try:
        yield made
    finally:
        end_lab(made)


@pytest.fixture
def hv(tmp_path):
    """A Hypervisor on a fresh datastore; VMs still running at the end are powered off, pass or fail."""
    from minivisor import Hypervisor

    hypervisor = Hypervisor(tmp_path / "datastore")
    yield hypervisor
    trouble = power_off_all(hypervisor.datastore.root)
    if trouble:
        pytest.fail("VMs left running that would not stop (killed): " + "; ".join(trouble))


@pytest.fixture(autouse=True)
def _qemus_end_with_their_test(request):
    """Fail (loudly) a test that leaves a QEMU running on its temporary folder, and kill that QEMU.

    Fixtures power VMs off first (they are torn down before this one); anything still
    running here escaped them, so it is a leak to fix, not to hide.
    """
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None and (leaked := end_qemus_under(folder)):
        pytest.fail(f"{len(leaked)} QEMU process(es) outlived the test (killed now): " + "; ".join(leaked))


@pytest.fixture(scope="session", autouse=True)
def _no_qemu_outlives_the_session(tmp_path_factory):
    """The same net for QEMUs started on folders of module- and session-scoped fixtures."""
    yield
    if leaked := end_qemus_under(tmp_path_factory.getbasetemp()):
        pytest.fail(f"{len(leaked)} QEMU process(es) outlived the test session (killed now): " + "; ".join(leaked))


@pytest.fixture(scope="session")
def _qemu_stand_in(tmp_path_factory) -> Path:
    """A qemu-system-x86_64 that records that it ran (in ``calls``) and fails, for tests not marked ``qemu``."""
    folder = tmp_path_factory.mktemp("qemu-stand-in")
    program = folder / "qemu-system-x86_64"
    program.write_text(f'#!/bin/sh\necho "$*" >> "{folder / "calls"}"\n'
                       'echo "qemu-system-x86_64 ran in a test not marked qemu" >&2\nexit 1\n')
    program.chmod(0o755)
    (folder / "no-cache").write_text("a file, so no cache can be made below it\n")
    return folder


@pytest.fixture(autouse=True)
def _no_qemu_unless_marked(request, monkeypatch):
    """A test not marked ``qemu`` fails if it runs qemu-system-x86_64 (a VMM, the KVM probe, ``--version``).

    It finds the stand-in first on PATH, with no MINIVISOR_QEMU or MINIVISOR_ACCEL to go round it, and
    a cache folder that cannot be made: every KVM probe runs (and is caught), none replaces the user's
    cached answer. This keeps ``pytest -m "not qemu"`` honest: the fast part runs where QEMU is not installed.
    """
    if request.node.get_closest_marker("qemu"):
        yield
        return
    folder = request.getfixturevalue("_qemu_stand_in")
    calls = folder / "calls"
    calls.unlink(missing_ok=True)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("MINIVISOR_CACHE", str(folder / "no-cache" / "minivisor"))
    for name in ("MINIVISOR_QEMU", "MINIVISOR_ACCEL"):
        monkeypatch.delenv(name, raising=False)
    yield
    if calls.exists():
        ran = "; ".join(line[:100] for line in calls.read_text().splitlines()[:3])
        pytest.fail(f"this test ran qemu-system-x86_64 ({ran}): mark it qemu (pytest.mark.qemu)")
