"""The CLI loads what its command needs and nothing more (issue 13: a CLI that answers like virsh).

A real ``python -m minivisor`` run lists the modules it loaded: the help comes from the
command table alone; ``vm list`` loads no other command group, no service stack (Starlette, uvicorn,
asyncio), no QMP, no specfile parsing and no snapshot code, whether it reads the datastore or asks a
running service, and then not even the core. A snapshot, a linked clone, a registration or a list
through a running service loads only the client: no dataclasses (inspect), pathlib, urllib.parse
(ipaddress), typing, json or threading (the client speaks through their C modules), nor argparse (plain
words are read without it), nor the specfile or ``.vmsd`` reader, nor even re or enum (a VmInfo makes its
Path and VmState on first use). A direct ``vm start`` of a VM without NICs loads, up to QEMU's spawn, neither
dataclasses nor logging, shutil or secrets, nor the network modules or QMP. A direct snapshot, linked clone or
power-on on a single host loads neither typing (its modules import it for type checkers only) nor the cluster
package.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cli_runner import RUN_AND_LIST, modules_loaded_by_cli

from minivisor import Hypervisor
from minivisor.client import connect

SERVICE_STACK = ("starlette", "uvicorn", "asyncio", "h11", "pydantic", "pydantic_core")
GONE = ("typer", "click", "rich")  # the CLI's libraries before issue 13
# What a command through a service does without (each costs ~1-10 ms of a command that takes ~50)
NOT_FOR_A_CLIENT = ("dataclasses", "inspect", "pathlib", "ipaddress", "urllib.parse", "typing", "http.client", "socket",
                    "json", "threading", "argparse", "gettext", "locale", "minivisor.cli.argparser",
                    "minivisor.core.results", "minivisor.datastore.layout", "minivisor.dirs")
# nor, since a VmInfo makes its Path and VmState on first use, what pathlib and enum load
NOR_FOR_A_VM = ("re", "enum", "fnmatch", "minivisor.vmm.states")
NOT_FOR_LISTING = ("minivisor.vmm.qmp", "minivisor.spec.vmspec", "minivisor.spec.vmx", "minivisor.spec.vmsd",
                   "minivisor.core.snapshots", "minivisor.core.clones", "minivisor.images.qemu_img")


# `python -m minivisor vm start ...` up to QEMU's spawn, which is refused (no guest boots) once the names of every
# module loaded are on stderr after the marker line: what a power-on loads before QEMU starts
START_AND_LIST = ("import os, sys, _posixsubprocess\n"
                  "spawn = _posixsubprocess.fork_exec\n"
                  "def refuse_qemu(args, executables, *rest):\n"
                  "    if any(b'qemu-system' in os.path.basename(exe) for exe in executables):\n"
                  "        sys.stderr.write('\\nmodules:\\n' + '\\n'.join(sorted(sys.modules)))\n"
                  "        os._exit(0)\n"
                  "    return spawn(args, executables, *rest)\n"
                  "_posixsubprocess.fork_exec = refuse_qemu\n"
                  "import runpy\n"
                  "sys.argv[0] = 'minivisor'\n"
                  "runpy.run_module('minivisor', run_name='__main__', alter_sys=True)\n")
# What a power-on of a VM without NICs does without before QEMU starts (each ~3-10 ms of ~75), nor, with no
# journal to finish, no EFI variables to copy and no discarded disks, the disk tools (~1 ms each)
NOT_BEFORE_QEMU = ("dataclasses", "inspect", "logging", "shutil", "secrets", "minivisor.core.networks", "minivisor.net.switch",
                   "minivisor.net.dhcp", "minivisor.net.firewall", "minivisor.vmm.hotplug", "minivisor.vmm.qmp",
                   "socket", "base64", "minivisor.images.vmdk", "minivisor.storage.nvram", "minivisor.images.qemu_img",
                   "minivisor.images.qcow2", "hashlib", "_hashlib", "sqlite3", "datetime")
# What a direct command on a single host does without (typing ~2.5 ms; a cluster member's modules, threading ~1 ms)
NOT_DIRECT = ("typing", "minivisor.cluster", "minivisor.cluster.config", "threading")


def imported_by_cli(*args: str, direct: bool = True, script: str = RUN_AND_LIST, **env_vars: str) -> set[str]:
    """Every module ``minivisor ARGS`` loads (the command must succeed)."""
    env = {name: value for name, value in os.environ.items() if name != "MINIVISOR_DIRECT"} | env_vars
    if direct:
        env["MINIVISOR_DIRECT"] = "1"
    return modules_loaded_by_cli(*args, env=env, script=script)


def packages(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in names)


def command_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith("minivisor.cli.")}


@pytest.fixture(scope="module")
def datastore(tmp_path_factory):
    root = tmp_path_factory.mktemp("imports") / "datastore"
    Hypervisor(root).create_vm("web", network="none", disk_size="16M")
    return root


@pytest.fixture(scope="module")
def service(datastore):
    """A real `minivisor serve` on loopback for the datastore, stopped at the end."""
    log = open(datastore.parent / "service.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "minivisor", "-d", str(datastore), "serve", "--listen",
                             "127.0.0.1:0", "--no-autostart"], stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while connect(datastore) is None:
            assert proc.poll() is None and time.monotonic() < deadline, (datastore.parent / "service.log").read_text()
            time.sleep(0.05)
        yield datastore
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


@pytest.mark.parametrize("args", [["--help"], ["vm", "--help"], []])
def test_help_comes_from_the_command_table(args):
    modules = imported_by_cli(*args)
    assert "minivisor.cli" in modules
    assert not command_modules(modules) and "argparse" not in modules and "minivisor.core.hypervisor" not in modules


def test_vm_list_on_the_datastore_loads_the_catalog_only(datastore):
    modules = imported_by_cli("-d", str(datastore), "vm", "list")
    assert "minivisor.core.hypervisor" in modules and "minivisor.datastore.catalog" in modules
    assert command_modules(modules) == {"minivisor.cli.vm", "minivisor.cli.parsing", "minivisor.cli.output"}
    assert not packages(modules, SERVICE_STACK + GONE)
    assert not modules & set(NOT_FOR_LISTING)


@pytest.mark.parametrize("json_output", [False, True])
def test_vm_list_through_the_service_loads_only_the_client(service, json_output):
    modules = imported_by_cli("-d", str(service), "vm", "list", *(["--json"] * json_output), direct=False)
    assert "minivisor.client" in modules and "minivisor.core.vminfo" in modules
    assert command_modules(modules) == {"minivisor.cli.vm", "minivisor.cli.parsing",
                                        *(() if json_output else ("minivisor.cli.output",))}
    assert not packages(modules, SERVICE_STACK + GONE)
    printing = {"json", "re", "enum"} if json_output else set()  # --json prints with json, which loads re
    assert not modules & {*NOT_FOR_LISTING, *NOT_FOR_A_CLIENT, *NOR_FOR_A_VM, "minivisor.core.hypervisor",
                          "minivisor.datastore.catalog", "sqlite3", "_sqlite3"} - printing
    assert "minivisor.vmm.states" not in modules


def test_a_linked_clone_through_the_service_loads_only_the_client(service):
    modules = imported_by_cli("-d", str(service), "vm", "clone", "web", "web-clone", "--linked", direct=False)
    assert "minivisor.client" in modules and "minivisor.core.vminfo" in modules
    assert command_modules(modules) == {"minivisor.cli.vm", "minivisor.cli.parsing", "minivisor.cli.output"}
    assert not packages(modules, SERVICE_STACK + GONE)
    assert not modules & {*NOT_FOR_LISTING, *NOT_FOR_A_CLIENT, *NOR_FOR_A_VM, "minivisor.core.hypervisor",
                          "minivisor.datastore.catalog", "sqlite3", "_sqlite3"}
    assert Hypervisor(service).get_vm("web-clone").disks


def test_a_registration_through_the_service_loads_only_the_client(service, monkeypatch):
    """The specfile is named relative to the CLI's folder: the client sends it made absolute, without pathlib."""
    folder = service / "web-registered"
    folder.mkdir()
    (folder / "web-registered.vmx").write_text('displayName = "web-registered"\nmemSize = "64"\nguestOS = "other-64"\n')
    monkeypatch.chdir(service)
    modules = imported_by_cli("-d", str(service), "vm", "register", "web-registered/web-registered.vmx",
                              "--name", "web-registered", direct=False)
    assert "minivisor.client" in modules and "minivisor.core.vminfo" in modules
    assert command_modules(modules) == {"minivisor.cli.vm", "minivisor.cli.parsing"}
    assert not modules & {*NOT_FOR_LISTING, *NOT_FOR_A_CLIENT, *NOR_FOR_A_VM, "minivisor.core.hypervisor",
                          "minivisor.datastore.catalog", "sqlite3", "_sqlite3"}
    assert Hypervisor(service).get_vm("web-registered").vmx == folder / "web-registered.vmx"


def test_a_snapshot_through_the_service_loads_only_the_client_and_the_snapshot_type(service):
    modules = imported_by_cli("-d", str(service), "snapshot", "take", "web", "through-the-service", direct=False)
    assert "minivisor.client" in modules and "minivisor.spec.snapshot" in modules
    assert command_modules(modules) == {"minivisor.cli.snapshot", "minivisor.cli.parsing"}
    assert not packages(modules, SERVICE_STACK + GONE)
    assert not modules & {*NOT_FOR_LISTING, *NOT_FOR_A_CLIENT, "minivisor.core.hypervisor", "minivisor.datastore.catalog",
                          "sqlite3", "_sqlite3", *NOR_FOR_A_VM}
    assert "through-the-service" in [snap["name"] for snap in Hypervisor(service).snapshot_list("web")]


def test_a_vm_without_nics_powers_on_without_the_network_modules_or_dataclasses(datastore):
    modules = imported_by_cli("-d", str(datastore), "vm", "start", "web", script=START_AND_LIST,
                              MINIVISOR_ACCEL="tcg")  # no KVM probe: it would spawn a QEMU of its own first
    assert "minivisor.core.power" in modules and "minivisor.vmm.plan" in modules  # it got as far as QEMU's spawn
    assert not modules & set(NOT_BEFORE_QEMU)
    # subprocess, which spawns QEMU, loads threading: what else a direct command does without, a power-on does too
    assert not modules & set(NOT_DIRECT) - {"threading"}


def test_a_direct_snapshot_loads_neither_typing_nor_the_cluster(datastore):
    modules = imported_by_cli("-d", str(datastore), "snapshot", "take", "web", "direct")
    assert "minivisor.core.snapshots" in modules and "minivisor.spec.vmspec" in modules
    assert not modules & set(NOT_DIRECT) and not packages(modules, SERVICE_STACK + GONE)
    assert "direct" in [snap["name"] for snap in Hypervisor(datastore).snapshot_list("web")]


def test_a_direct_linked_clone_loads_neither_typing_nor_the_cluster(datastore):
    Hypervisor(datastore).snapshot_take("web", "to-clone")
    modules = imported_by_cli("-d", str(datastore), "vm", "clone", "web", "web-direct-clone", "--linked",
                              "--snapshot", "to-clone")
    assert "minivisor.core.clones" in modules and "minivisor.core.clustering" in modules  # it asked: one stat
    assert not modules & set(NOT_DIRECT) and not packages(modules, SERVICE_STACK + GONE)
    assert Hypervisor(datastore).get_vm("web-direct-clone").disks
