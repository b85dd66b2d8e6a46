"""End to end: commands, files, addresses and shutdown through the QEMU guest agent the test guest runs,
and commands through a guest that is only a POSIX shell on its serial console. Checked from inside."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import secrets
from pathlib import Path

import pytest
from boot_media import shell_only_disk
from cli_runner import run_cli
from guests import create_guest, guest_address, wait_for
from vmm_guard import power_off_all

from minivisor.errors import AgentCommandError, GuestTimeoutError
from minivisor.service.models import Copied
from minivisor.vmm.console import wait_for_line
from minivisor.vmm.argv import SHUTDOWN_TRACE

pytestmark = pytest.mark.qemu

# Arguments a shell would mangle if they were joined with spaces: runs of spaces, quotes, ;, $, globs, \
TRICKY = ["a  b", "it's", 'say "hi"', "x; echo INJECTED", "$HOME", "*", "back\\slash", ""]
LARGE = 1024 * 1024  # bytes of output through the agent


def boot_agent_vm(hv, appliance_image) -> str:
    """The agent guest ``ga``, running, its agent answering."""
    create_guest(hv, "ga", appliance_image, memory_mib=128, network="nat")
    hv.start_vm("ga", wait_ready=True, timeout=90)
    hv.exec_in_vm("ga", "true", via="agent")  # the guest starts its agent after its ready line
    return "ga"


@pytest.fixture
def agent_vm(hv, appliance_image, tmp_path):
    """A guest of the test's own, for a test that breaks it (its power button, its agent)."""
    hv.allow_path(tmp_path)  # the tests' host files: copies name files in the datastore or allowed folders only
    return boot_agent_vm(hv, appliance_image)


@pytest.fixture
def shell_vm(hv, appliance_image, tmp_path):
    image = shell_only_disk(appliance_image, tmp_path / "shell-only.img")
    create_guest(hv, "sh", image, memory_mib=128, network="none")
    hv.start_vm("sh")  # no ready line: this guest prints none
    return "sh"


def printed_args(hv, vm: str, args: list[str], via: str) -> list[str]:
    """The arguments the guest's printf received, one per line between brackets."""
    result = hv.exec_in_vm(vm, ["printf", "[%s]\\n", *args], timeout=60, via=via)
    assert result.exit_code == 0, result
    return re.findall(r"\[(.*?)\]\n", result.output, re.DOTALL)


def test_exec_through_a_guest_that_is_only_a_serial_shell(hv, shell_vm):
    # no agent in this guest: auto takes the serial shell, found by its answer to a probe
    result = hv.exec_in_vm(shell_vm, "echo $$; ls /proc | wc -l", timeout=90)
    assert result.via == "serial" and result.output.split() == ["1", "0"]  # the shell is init: nothing mounted
    assert printed_args(hv, shell_vm, TRICKY, "serial") == TRICKY
    assert hv.exec_in_vm(shell_vm, "false").exit_code == 1
    assert hv.exec_in_vm(shell_vm, ["sh", "-c", "exit 42"]).exit_code == 42
    lines = 64 * 1024 // 16
    big = hv.exec_in_vm(shell_vm, f"yes 0123456789abcde | head -n {lines}", timeout=120)
    assert big.output == "0123456789abcde\n" * lines
    # no job control on /dev/console, so no Ctrl-C: the guest-side watchdog ends the command
    with pytest.raises(GuestTimeoutError, match="did not finish within 3 s: killed"):
        hv.exec_in_vm(shell_vm, "echo started; sleep 302", timeout=3)
    assert hv.exec_in_vm(shell_vm, "echo again").output == "again\n"


def test_a_command_whose_vm_is_paused_while_it_runs_fails_saying_so(hv, shell_vm):
    # as QEMU pauses a VM whose disk write finds the datastore full: the guest cannot answer, nor end the command
    hv.exec_in_vm(shell_vm, "true", timeout=60)  # its shell is up
    tag = secrets.token_hex(4)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # pauses once the command runs: its output in the log
        pausing = pool.submit(lambda: (wait_for_line(hv.vm_paths(shell_vm).serial_log, f"started-{tag}", 60),
                                       hv.pause_vm(shell_vm)))
        with pytest.raises(GuestTimeoutError, match=r"within 5 s.*: the VM is paused \(paused\)") as ended:
            hv.exec_in_vm(shell_vm, f"echo started-''{tag}; sleep 305", timeout=5)  # '': the typed line differs
        pausing.result(timeout=10)
    assert f"minivisor vm resume {shell_vm}" in ended.value.hint
    hv.resume_vm(shell_vm)
    assert hv.exec_in_vm(shell_vm, "echo again").output == "again\n"


def test_stop_asks_the_agent_when_the_guest_ignores_the_power_button(hv, agent_vm):
    hv.exec_in_vm(agent_vm, "killall acpid; while pidof acpid; do sleep 0.1; done")
    assert hv.exec_in_vm(agent_vm, "pidof acpid").exit_code == 1  # the power button does nothing now
    assert hv.stop_vm(agent_vm, timeout=60) == "soft"
    # QEMU's trace of the shutdown: cause 6 is SHUTDOWN_CAUSE_GUEST_SHUTDOWN (the guest powered itself off)
    assert f"{SHUTDOWN_TRACE} reason=6" in hv.vm_paths(agent_vm).vmm_log.read_text()


def test_a_guest_whose_agent_speaks_garbage_gets_one_line_errors_and_no_host_file(hv, agent_vm, tmp_path):
    # the guest's own program on the agent's port, in qemu-ga's place: a delimiter, then garbage
    hv.exec_in_vm(agent_vm, "killall qemu-ga; while pidof qemu-ga; do sleep 0.1; done", via="serial")
    port = hv.exec_in_vm(agent_vm, "grep -l org.qemu.guest_agent.0 /sys/class/virtio-ports/*/name", via="serial")
    device = "/dev/" + port.output.strip().split("/")[-2]
    hv.exec_in_vm(agent_vm, f"( exec 3<>{device}; while :; do printf '\\377GUEST-GARBAGE\\n' >&3; sleep 0.1; "
                            "done ) >/dev/null 2>&1 &", via="serial")
    out = tmp_path / "out"
    out.mkdir()
    for args in (["vm", "copy-from", agent_vm, "/etc/passwd", str(out / "passwd")],
                 ["vm", "exec", "--via", "agent", agent_vm, "--", "true"]):
        cli = run_cli(*args, datastore=hv.datastore.root)
        assert cli.returncode != 0 and len(cli.stderr.strip().splitlines()) == 1, (args, cli.stderr)
        assert "not a message" in cli.stderr and "Traceback" not in cli.stderr
    assert list(out.iterdir()) == []
    assert hv.vm_addresses(agent_vm)[0]["guest"] is None  # vm ip: what the host knows, nothing from the guest


def test_an_agent_that_runs_no_commands_leaves_exec_to_the_serial_shell(hv, agent_vm):
    """qemu-ga with guest-exec blocked (--block-rpcs, RHEL's default) answers CommandNotFound: --via auto went no
    further and failed; it now runs the command through the serial shell, as when no agent answers (nothing ran
    through the agent), and --via agent says how to allow it."""
    port = hv.exec_in_vm(agent_vm, "grep -l org.qemu.guest_agent.0 /sys/class/virtio-ports/*/name", via="serial")
    device = "/dev/" + port.output.strip().split("/")[-2]
    hv.exec_in_vm(agent_vm, "killall qemu-ga; while pidof qemu-ga; do sleep 0.1; done; "
                            f"qemu-ga -m virtio-serial -p {device} -t /run -b guest-exec </dev/null >/dev/null 2>&1 &",
                  via="serial")
    wait_for("the restarted agent never answered", lambda: hv.vm_addresses(agent_vm)[0]["guest"] is not None)
    result = run_cli("vm", "exec", agent_vm, "--json", "--", "echo", "through the shell", datastore=hv.datastore.root)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["output"], answer["via"]) == ("through the shell\n", "serial")
    refused = run_cli("vm", "exec", "--via", "agent", agent_vm, "--", "true", datastore=hv.datastore.root)
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1 and "--via serial" in refused.stderr, \
        refused.stderr


@pytest.fixture(scope="module")
def shared_agent_hv(appliance_image, tmp_path_factory):
    """A Hypervisor whose agent guest ``ga`` runs, for the tests of TestOnOneRunningGuest; powered off after the
    module, pass or fail."""
    from minivisor import Hypervisor

    hypervisor = Hypervisor(tmp_path_factory.mktemp("guest-ops") / "datastore")
    try:
        boot_agent_vm(hypervisor, appliance_image)
        yield hypervisor
    finally:
        trouble = power_off_all(hypervisor.datastore.root)
        if trouble:
            pytest.fail("VMs left running that would not stop (killed): " + "; ".join(trouble))


class TestOnOneRunningGuest:
    """Tests that leave the guest as they found it (running, its agent answering; what they write is in files
    of their own under /tmp) share one: a boot each would be most of their time."""

    @pytest.fixture
    def hv(self, shared_agent_hv):
        return shared_agent_hv

    @pytest.fixture
    def agent_vm(self, hv, tmp_path):
        hv.allow_path(tmp_path)  # the test's host files: copies name files in the datastore or allowed folders only
        return "ga"

    def test_exec_through_the_agent_keeps_arguments_exit_codes_and_streams(self, hv, agent_vm):
        assert printed_args(hv, agent_vm, TRICKY, "agent") == TRICKY
        result = hv.exec_in_vm(agent_vm, "echo out; echo err >&2; exit 7")  # auto: the agent answers
        assert (result.via, result.exit_code, result.output, result.stderr) == ("agent", 7, "out\n", "err\n")
        assert hv.exec_in_vm(agent_vm, ["sh", "-c", "x=1; y=2; echo $((x + y))"]).output == "3\n"
        large = hv.exec_in_vm(agent_vm, f"yes 0123456789abcde | head -c {LARGE}")
        assert large.output == ("0123456789abcde\n" * (LARGE // 16))
        # as a user types it: each argument exact, stderr on stderr, the exit code the command's
        cli = run_cli("vm", "exec", agent_vm, "--", "sh", "-c", "echo 'a  b'; ls /nonexistent",
                      datastore=hv.datastore.root)
        assert (cli.returncode, cli.stdout) == (1, "a  b\n") and "nonexistent" in cli.stderr
        cli = run_cli("vm", "exec", agent_vm, "--", "echo", "a  b", datastore=hv.datastore.root)
        assert cli.stdout == "a  b\n"

    def test_a_command_past_its_timeout_is_ended_and_the_guest_still_answers(self, hv, agent_vm):
        with pytest.raises(GuestTimeoutError, match="did not finish within 2 s: killed"):
            hv.exec_in_vm(agent_vm, ["sleep", "300"], timeout=2, via="agent")
        assert hv.exec_in_vm(agent_vm, "ps | grep -c 'sleep 30[0]'", via="agent").output == "0\n"
        with pytest.raises(GuestTimeoutError, match="did not finish within 2 s: killed"):  # what it started ends too
            hv.exec_in_vm(agent_vm, "sleep 303 & sleep 304 | cat; echo never", timeout=2, via="agent")
        assert hv.exec_in_vm(agent_vm, "ps | grep -c 'sleep 30[34]'", via="agent").output == "0\n"
        # a job left in the background with the command's output holds the answer: the error says what to do
        with pytest.raises(GuestTimeoutError) as ended:
            hv.exec_in_vm(agent_vm, "sleep 306 & echo started", timeout=2, via="agent")
        assert "(job >/dev/null 2>&1 &), or use --no-wait" in ended.value.hint
        assert hv.exec_in_vm(agent_vm, "sleep 307 >/dev/null 2>&1 & echo started", via="agent").output == "started\n"
        hv.exec_in_vm(agent_vm, "pkill -f 'sleep 307' || true", via="agent")

    @pytest.mark.parametrize("via", ["agent", "serial"])
    def test_a_command_not_waited_for_runs_on_in_the_background(self, hv, agent_vm, via):
        started = hv.exec_in_vm(agent_vm, "echo $$ > /tmp/bg; exec sleep 305", via=via, wait=False)
        assert (started.exit_code, started.output, started.via) == (0, "", via) and started.pid > 1
        alive = hv.exec_in_vm(agent_vm, f"cat /tmp/bg; kill -0 {started.pid} && echo alive", via="agent")
        assert alive.output == f"{started.pid}\nalive\n"  # the pid answered is the command's own
        hv.exec_in_vm(agent_vm, f"kill {started.pid}", via="agent")
        cli = run_cli("vm", "exec", agent_vm, "--no-wait", "--", "sleep", "306", datastore=hv.datastore.root)
        pid = int(cli.stdout.removeprefix(f"{agent_vm}: started, pid ").strip())
        assert hv.exec_in_vm(agent_vm, f"kill {pid} && echo ended").output == "ended\n"
        with pytest.raises(GuestTimeoutError, match="did not finish within 3 s: killed"):
            hv.exec_in_vm(agent_vm, "echo started; exec sleep 301", timeout=3, via="serial")
        after = hv.exec_in_vm(agent_vm, "echo still here; ps | grep -c 'sleep 30[1]'", via="serial")
        assert (after.output, after.exit_code) == ("still here\n0\n", 1)  # grep -c: 0 found, status 1

    def test_copy_a_binary_file_in_and_out_with_its_checksum_kept(self, hv, agent_vm, tmp_path):
        data = os.urandom(5 * 1024 * 1024 + 123)  # more than one chunk, and not a whole number of them
        source = tmp_path / "random.bin"
        source.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        copied = hv.copy_to_guest(agent_vm, source, "/tmp/in.bin")
        assert Copied.model_validate(copied).bytes == len(data)  # the REST answer's model (the OpenAPI document's)
        assert hv.exec_in_vm(agent_vm, "sha256sum /tmp/in.bin").output.split()[0] == digest
        hv.exec_in_vm(agent_vm, "cp /tmp/in.bin /tmp/out.bin")
        # the host file named is a link to another file: refused, the file it points to untouched
        elsewhere = tmp_path / "elsewhere"
        elsewhere.write_bytes(b"keep me")
        target = tmp_path / "out.bin"
        target.symlink_to(elsewhere)
        cli = run_cli("vm", "copy-from", agent_vm, "/tmp/out.bin", str(target), datastore=hv.datastore.root)
        assert cli.returncode != 0 and "is a symbolic link" in cli.stderr and elsewhere.read_bytes() == b"keep me"
        target.unlink()
        cli = run_cli("vm", "copy-from", agent_vm, "/tmp/out.bin", str(target), "--json", datastore=hv.datastore.root)
        assert cli.returncode == 0, cli.stderr
        assert Copied.model_validate_json(cli.stdout).bytes == len(data)
        assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")) == []

    def test_copy_refusals_are_one_line_and_leave_nothing(self, hv, agent_vm, tmp_path):
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(AgentCommandError, match="guest-file-open"):
            hv.copy_from_guest(agent_vm, "/no/such/file", out / "x")
        assert list(out.iterdir()) == []
        link = out / "link"
        link.symlink_to("/etc/hostname")
        cli = run_cli("vm", "copy-to", agent_vm, str(link), "/tmp/leak", datastore=hv.datastore.root)
        assert cli.returncode != 0 and len(cli.stderr.strip().splitlines()) == 1
        assert hv.exec_in_vm(agent_vm, "test -e /tmp/leak").exit_code == 1

    def test_copies_name_host_files_only_where_the_datastore_allows(self, hv, agent_vm, tmp_path):
        """A caller (a REST client too) cannot read a host file into the guest, nor write a guest's file over the
        host's or a VM's own files: host paths follow the datastore's folder rules, as disks do."""
        hv.exec_in_vm(agent_vm, "echo 'evil = \"1\"' >/tmp/evil")
        vmx = hv.vm_paths(agent_vm).vmx
        before = vmx.read_bytes()
        for args in (["vm", "copy-to", agent_vm, "/etc/shadow", "/tmp/shadow"],
                     ["vm", "copy-from", agent_vm, "/tmp/evil", "/etc/minivisor-planted"],
                     ["vm", "copy-from", agent_vm, "/tmp/evil", str(vmx)],
                     ["vm", "copy-from", agent_vm, "/tmp/evil", str(hv.datastore.root / ".minivisor" / "planted")]):
            cli = run_cli(*args, datastore=hv.datastore.root)
            assert cli.returncode != 0 and len(cli.stderr.strip().splitlines()) == 1, (args, cli.stderr)
        assert hv.exec_in_vm(agent_vm, "test -e /tmp/shadow").exit_code == 1
        assert not os.path.exists("/etc/minivisor-planted") and vmx.read_bytes() == before
        assert not (hv.datastore.root / ".minivisor" / "planted").exists()

    def test_vm_ip_is_what_the_guest_reports(self, hv, agent_vm):
        guest_address(hv, agent_vm)  # the guest's DHCP client has its lease
        inside = hv.exec_in_vm(agent_vm, "ip -o addr show dev eth0").output
        reported = {f"{m.group(1)}" for m in re.finditer(r"inet6? (\S+)", inside)}
        (nic,) = hv.vm_addresses(agent_vm)
        assert nic["interface"] == "eth0" and set(nic["guest"]) == reported and reported
        cli = run_cli("vm", "ip", agent_vm, datastore=hv.datastore.root)
        assert all(address in cli.stdout for address in reported)
