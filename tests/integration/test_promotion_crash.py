"""kill -9 in the middle of an HA promotion (a replica made a VM of this host, see core/replication.promote): the
replica is whole until its VM is published, and what is left of it once the VM is published is removed without
touching the VM's files. The promotion runs in a real process that SIGKILLs itself at a named point."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from minivisor import Hypervisor
from minivisor.core.replication import REPLICAS, drop_replicas, replica_vms
from minivisor.storage.journal import CRASH_ENV

from test_crash_safety import holds, write

VM_UUID = "564d5a1c-7d3e-4b2f-9a10-6e2c1f0b7a55"


@pytest.fixture
def replica(tmp_path) -> tuple[Path, Path]:
    """A datastore holding the replica of VM 'web' (a VM of another datastore, its disk written), and that
    replica's folder."""
    source = Hypervisor(tmp_path / "source")
    source.create_vm("web", memory_mib=64, disk_size="4M", network="none")
    write(source.datastore.root / "web" / "web.qcow2", 0)
    root = tmp_path / "ds"
    Hypervisor(root)
    folder = root / ".minivisor" / REPLICAS / VM_UUID
    folder.mkdir(parents=True)
    for name in ("web.vmx", "web.qcow2"):
        shutil.copyfile(source.datastore.root / "web" / name, folder / name)
    (folder / "state.json").write_text(json.dumps({"vm": "web", "source": "a", "generation": 1, "pending": None}))
    return root, folder


def promote_killed_at(root: Path, point: str) -> None:
    code = ("import sys; from minivisor import Hypervisor; from minivisor.core.replication import promote; "
            "promote(Hypervisor(sys.argv[1]), sys.argv[2])")
    done = subprocess.run([sys.executable, "-c", code, str(root), VM_UUID], env={**os.environ, CRASH_ENV: point},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_a_promotion_killed_before_its_vm_is_published_leaves_the_replica_whole(replica):
    root, folder = replica
    promote_killed_at(root, "promote-linked")
    hv = Hypervisor(root)  # the next open clears the dead process's staging folder: links only
    assert hv.list_vms() == [] and not (root / "web").exists()
    assert replica_vms(root / ".minivisor") == {VM_UUID: "web"}
    assert holds(folder / "web.qcow2", 1)


def test_what_a_promotion_killed_after_publishing_leaves_is_removed_and_the_vm_keeps_its_disk(replica):
    root, folder = replica
    promote_killed_at(root, "promote-published")
    hv = Hypervisor(root)
    assert [(vm.name, vm.uuid) for vm in hv.list_vms()] == [("web", VM_UUID)]
    drop_replicas(root / ".minivisor", wanted=lambda vm_uuid: True, registered={VM_UUID})
    assert not folder.exists()
    assert holds(root / "web" / "web.qcow2", 1)


def test_a_replica_of_a_vm_registered_here_that_no_promotion_made_is_kept(replica):
    """A registered copy with the same UUID and a replica beside it (both kept: only a promotion's leftover goes)."""
    root, folder = replica
    drop_replicas(root / ".minivisor", wanted=lambda vm_uuid: True, registered={VM_UUID})
    assert replica_vms(root / ".minivisor") == {VM_UUID: "web"}
