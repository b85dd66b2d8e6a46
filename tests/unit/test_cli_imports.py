"""The CLI never loads the service's stack (Starlette, uvicorn, asyncio): not on its own, not through the client."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minivisor import Hypervisor
from minivisor.service.discovery import SERVICE_FILE, TOKEN_FILE
from minivisor.procfs import start_ticks

HEAVY = ("starlette", "uvicorn", "asyncio", "h11")


def imported_by_cli(*args: str) -> set[str]:
    """Every module ``minivisor ARGS`` imports, as ``-X importtime`` reports them (a service is used if one runs)."""
    env = {name: value for name, value in os.environ.items() if name != "MINIVISOR_DIRECT"}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "minivisor", *args],
                            capture_output=True, text=True, timeout=60, env=env)
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert lines, result.stderr
    return {line.rsplit("|", 1)[1].strip() for line in lines}


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.fixture
def datastore(tmp_path):
    root = tmp_path / "datastore"
    Hypervisor(root).create_vm("web", network="none")
    return root


def test_vm_list_on_the_datastore_loads_no_service_stack(datastore):
    modules = imported_by_cli("-d", str(datastore), "vm", "list")
    assert "minivisor.core.hypervisor" in modules and not heavy(modules)


def test_vm_list_through_the_client_loads_no_service_stack(datastore):
    """A service.json naming a live process (this one) sends the CLI through the client; nothing listens at
    the port, so the command fails, after its imports."""
    (datastore / TOKEN_FILE).write_text("token\n")
    (datastore / SERVICE_FILE).write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": os.getpid(),
                                                      "start_ticks": start_ticks(os.getpid())}))
    modules = imported_by_cli("-d", str(datastore), "vm", "list")
    assert "minivisor.client" in modules and not heavy(modules)
