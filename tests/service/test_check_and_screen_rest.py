"""vm check and vm screenshot over REST: the same answers as the core API gives directly; a check run where
a datastore is says which NICs would find no network there."""

from __future__ import annotations

import json

import pytest
from .conftest import small_vm

from minivisor import Hypervisor

SPECFILE = ('config.version = "8"\nvirtualHW.version = "19"\nmemSize = "64"\n'
            'scsi0.present = "TRUE"\nscsi0.virtualDev = "pvscsi"\n'
            'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "gone.vmdk"\n'
            'ethernet0.present = "TRUE"\nethernet0.connectionType = "custom"\nethernet0.vnet = "VMnet5"\n'
            'ethernet1.present = "TRUE"\nethernet1.networkName = "nowhere"\n'
            'ethernet2.present = "TRUE"\nethernet2.connectionType = "nat"\n')


def verdicts(report: dict) -> dict[str, tuple[str, str]]:
    return {k["key"]: (k["verdict"], k["reason"]) for k in report["keys"]}


def test_check_through_the_service_judges_nics_against_its_networks_and_refuses_missing_disks(service, tmp_path):
    vmx = tmp_path / "elsewhere" / "vm.vmx"
    vmx.parent.mkdir()
    vmx.write_text(SPECFILE)
    report = service.client.check_vmx(str(vmx))
    assert report == Hypervisor(service.root).check_vmx(vmx)
    seen = verdicts(report)
    assert seen["scsi0:0.fileName"][0] == "refused" and not report["powers_on"]
    assert seen["ethernet1.networkName"][0] == "disconnected" and "nowhere" in seen["ethernet1.networkName"][1]
    assert seen["ethernet0.vnet"][0] == "disconnected"
    assert seen["ethernet2.connectionType"] == ("virtualized", "")  # nat is always there
    assert any(w.startswith("ethernet1: ") and w.endswith("link disconnected") for w in report["warnings"])
    via_cli = service.cli("vm", "check", str(vmx), "--json")
    assert via_cli.returncode == 66 and json.loads(via_cli.stdout) == report
    assert sorted(p.name for p in vmx.parent.iterdir()) == ["vm.vmx"]  # nothing written beside it


def test_check_through_the_service_reads_specfiles_only(service, tmp_path):
    """A check echoes the file's keys and values: through the service, no other file may be read that way."""
    from minivisor.errors import PathError

    secret = tmp_path / "secret.txt"
    secret.write_text('password = "hunter2"\n')
    with pytest.raises(PathError) as refused:
        service.client.check_vmx(str(secret))
    assert "hunter2" not in str(refused.value) and "not a specfile" in str(refused.value)


def test_check_without_a_datastore_does_not_judge_nics(tmp_path):
    from cli_runner import run_cli

    vmx = tmp_path / "vm.vmx"
    vmx.write_text(SPECFILE)
    report = json.loads(run_cli("vm", "check", str(vmx), "--json", datastore=tmp_path / "none").stdout)
    assert verdicts(report)["ethernet1.networkName"][0] == "virtualized" and not (tmp_path / "none").exists()


@pytest.mark.qemu
def test_a_screenshot_through_the_service_is_the_png_of_the_running_vms_screen(service):
    small_vm(Hypervisor(service.root), "vm1")
    service.client.start_vm("vm1")
    png = service.client.screenshot("vm1")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 100
    service.client.stop_vm("vm1", hard=True)
