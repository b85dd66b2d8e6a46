"""Names and values from specfiles, the catalog and guests never reach the terminal raw.

A ``displayName`` with ``ESC ] 0 ; ... BEL`` retitles the user's terminal, ``ESC [ 2 J`` clears it,
``ESC [ 31 m`` recolours what follows; rich markup (``[/]``) in a value once crashed ``vm explain``.
Each human-readable path (tables, detail views, warnings, events, error lines) must show such
values escaped (``\\x1b...``), and ``--json`` must give them back exactly (JSON escapes them itself).
"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
from cli_runner import run_cli

from minivisor import Hypervisor
from minivisor.spec.vmx import VmxDocument

# OSC retitle + BEL, CSI clear screen, SGR red, a C1 CSI, a backspace, a carriage return, a bidi override,
# rich markup; no "/", so it can be part of a file name too
PAYLOAD = "\x1b]0;pwned\x07\x1b[2J\x1b[31mRED\x9b1m\x08\r\u202e[red]"
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mRED\\x9b1m\\x08\\r\\u202e[red]"  # how a terminal must see it
MARKUP = "[/oops]"  # a closing tag with nothing open: rich raised MarkupError on it (vm explain crashed)
RAW = ("\x1b", "\x07", "\x9b", "\x08", "\r", "\u202e")  # none of these may reach stdout or stderr


@pytest.fixture
def hv(hv):
    """The shared fixture's datastore (VMs powered off at the end) with one small VM named "good"."""
    hv.create_vm("good", memory_mib=64, disk_size="16M", network="none")
    return hv


def cli(hv: Hypervisor, *args: str):
    """The CLI on the datastore, on pipes, with nothing that would make it colour its own output."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE")}
    env |= {"MINIVISOR_DIRECT": "1", "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "400"}
    result = run_cli(*args, datastore=hv.datastore.root, env=env, timeout=120)
    for raw in RAW:
        assert raw not in result.stdout and raw not in result.stderr, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    return result


def set_keys(hv: Hypervisor, **keys: str) -> None:
    """Set specfile keys as VMware writes them (control characters as |XX escapes); key__x is key.x."""
    path = hv.datastore.root / "good" / "good.vmx"
    doc = VmxDocument.load(path)
    for key, value in keys.items():
        doc.set(key.replace("__", "."), value)
    doc.save(path)


def unknown_network(hv: Hypervisor, name: str) -> None:
    set_keys(hv, ethernet0__present="TRUE", ethernet0__connectionType="custom", ethernet0__networkName=name)


def test_vm_show_and_list_escape_the_display_name_and_json_keeps_it_exact(hv):
    set_keys(hv, displayName=PAYLOAD + MARKUP)
    shown = cli(hv, "vm", "show", "good")
    assert shown.returncode == 0 and SHOWN + MARKUP in shown.stdout
    assert cli(hv, "vm", "list").returncode == 0
    exact = cli(hv, "vm", "show", "good", "--json")
    assert json.loads(exact.stdout)["display_name"] == PAYLOAD + MARKUP


def test_raw_control_bytes_in_the_specfile_are_escaped_on_screen_too(hv):
    with open(hv.datastore.root / "good" / "good.vmx", "ab") as handle:  # not as VMware writes them
        handle.write(b'displayName = "\x1b]0;pwned\x07\x1b[2J"\n')
    shown = cli(hv, "vm", "show", "good")
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in shown.stdout


def test_vm_list_escapes_a_name_in_the_catalog(hv):
    evil = "evil" + PAYLOAD
    hv.create_vm("evil", memory_mib=64, disk_size="16M", network="none")
    with sqlite3.connect(hv.datastore.root / ".minivisor" / "catalog.sqlite") as db:  # as a tampered catalog has it
        db.execute("UPDATE vms SET name = ? WHERE name = 'evil'", (evil,))
    listed = cli(hv, "vm", "list")
    assert listed.returncode == 0 and "evil" + SHOWN in listed.stdout
    assert evil in [vm["name"] for vm in json.loads(cli(hv, "vm", "list", "--json").stdout)]
    assert "evil" + SHOWN in cli(hv, "vm", "show", evil).stdout


@pytest.mark.qemu  # explaining a VM runs the KVM probe
def test_vm_explain_escapes_names_keys_warnings_and_the_command_line(hv):
    unknown_network(hv, f"net{PAYLOAD}{MARKUP}")
    set_keys(hv, displayName=PAYLOAD, **{"scsi0:1.present": "TRUE", "scsi0:1.deviceType": "cdrom-image",
                                         "scsi0:1.fileName": f"cd{PAYLOAD}.iso", "odd\x1b[31m.key": "x"})
    (hv.datastore.root / "good" / f"cd{PAYLOAD}.iso").write_bytes(b"\0" * 2048)
    explained = cli(hv, "vm", "explain", "good")
    assert explained.returncode == 0, explained.stderr
    out = explained.stdout
    assert SHOWN in out  # displayName
    assert "warning: ethernet0: network 'net\\x1b]0;pwned" in out  # the unknown network, as a warning
    assert "odd\\x1b[31m.key" in out  # a key not virtualized
    assert f"cd{SHOWN}.iso" in out  # the CD image, in the hardware table and the VMM's argv
    assert json.loads(cli(hv, "vm", "explain", "good", "--json").stdout)["spec"]["display_name"] == PAYLOAD


def test_error_lines_escape_what_they_echo(hv):
    set_keys(hv, firmware=PAYLOAD)
    for command in (["vm", "explain", "good"], ["vm", "start", "good"], ["vm", "show", PAYLOAD],
                    ["vm", "register", f"/nonexistent/{PAYLOAD}.vmx"], ["vm", "autostart", "good", PAYLOAD],
                    ["disk", "info", f"{PAYLOAD}.qcow2"]):
        result = cli(hv, *command)
        assert result.returncode != 0 and result.stderr.startswith("error: ")
        assert len(result.stderr.splitlines()) == 1
        assert "\\x1b" in result.stderr, result.stderr  # shown, escaped


@pytest.mark.qemu
def test_warnings_at_power_on_are_escaped(hv):
    unknown_network(hv, f"net{PAYLOAD}")
    started = cli(hv, "vm", "start", "good")
    assert started.returncode == 0, started.stderr
    assert "warning: ethernet0: network 'net\\x1b]0;pwned" in started.stderr
    assert cli(hv, "vm", "stop", "good", "--hard").returncode == 0


def test_events_and_the_snapshot_tree_escape_snapshot_names(hv):
    taken = cli(hv, "snapshot", "take", "good", f"snap{PAYLOAD}", "--description", f"about{PAYLOAD}")
    assert taken.returncode == 0, taken.stderr
    tree = cli(hv, "snapshot", "list", "good")
    assert f"snap{SHOWN}" in tree.stdout and f"about{SHOWN}" in tree.stdout
    events = cli(hv, "vm", "events", "good")
    assert f"snapshot=snap{SHOWN}" in events.stdout
    assert json.loads(cli(hv, "vm", "events", "good", "--json").stdout)[-1]["snapshot"] == f"snap{PAYLOAD}"


def test_a_disk_table_and_a_chain_escape_file_names(hv):
    folder = hv.datastore.root / "good"
    (folder / "good.qcow2").rename(folder / f"d{PAYLOAD}.qcow2")
    set_keys(hv, **{"scsi0:0.fileName": f"d{PAYLOAD}.qcow2"})
    listed = cli(hv, "vm", "disk", "good", "list")
    assert listed.returncode == 0 and f"d{SHOWN}.qcow2" in listed.stdout
    info = cli(hv, "disk", "info", str(folder / f"d{PAYLOAD}.qcow2"))
    assert info.returncode == 0 and f"d{SHOWN}.qcow2" in info.stdout
