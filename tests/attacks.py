"""What the path-policy attacks plant, and what a refusal must leave behind.

A *secret* is a host file outside the datastore with a unique marker: after an
attack, no file under the datastore may hold the marker, the datastore's own
metadata (service token, catalog rows) is unchanged, nothing was added, and
no VMM was started.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from minivisor import Hypervisor

TOKEN = "token"


@dataclass(frozen=True)
class Secret:
    """A host file the attacker wants: ``path`` holds ``marker`` many times over."""

    path: Path
    marker: bytes


def plant_secret(folder: Path, name: str = "secret.raw") -> Secret:
    """A 1 MiB host file full of a unique marker (so a leak into any disk shows up byte for byte)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = f"SECRET-{uuid.uuid4().hex}-".encode()
    path = folder / name
    path.write_bytes((marker * (1024 * 1024 // len(marker) + 1))[:1024 * 1024])
    return Secret(path, marker)


def with_token(hv: Hypervisor) -> Path:
    """The service's token file, as ``minivisor serve`` leaves it, so attacks on it can be seen."""
    token = hv.datastore.meta / TOKEN
    token.write_text(uuid.uuid4().hex)
    token.chmod(0o600)
    return token


def assert_no_leak(hv: Hypervisor, secret: Secret) -> None:
    """No file the project wrote under the datastore holds the secret's marker."""
    for path in hv.datastore.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret.marker not in path.read_bytes(), f"{path} holds the host file's content"


def assert_no_vmm_started(hv: Hypervisor, name: str) -> None:
    """The refusal came before QEMU: no VMM log was opened, no runtime folder made, the VM is off."""
    paths = hv.vm_paths(name)
    assert not paths.vmm_log.exists() and not paths.runtime_dir.exists()
    assert hv.get_vm(name).state.value == "poweredOff"


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def json_backing(secret: Secret) -> str:
    """The backing name that makes QEMU open a host file itself: a ``json:`` node description."""
    return "json:" + json.dumps({"driver": "raw", "file": {"driver": "file", "filename": str(secret.path)}},
                                separators=(",", ":"))


def qcow2_backed_by(path: Path, backing: str, backing_format: str = "raw") -> Path:
    """A 1 MiB qcow2 whose header names ``backing`` (not opened now: ``-u``)."""
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", backing_format, str(path), "1M")
    return path


def make_name_exist(folder: Path, name: str) -> None:
    """Empty folders (and an empty last file) so ``name`` also exists as a path relative to ``folder``.

    This is how the json: attack passes a check that only asks whether the backing file exists in the folder.
    """
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\0" * 1024 * 1024)


def add_keys(vmx: Path, text: str) -> None:
    """Append specfile lines (an attacker editing the specfile of a registered VM)."""
    vmx.write_text(vmx.read_text() + text)
