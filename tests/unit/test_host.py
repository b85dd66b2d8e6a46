"""Unit tests for minivisor.host: probe image, accelerator cache, env handling, host facts.

QEMU is never mocked. Where a test must count probes it uses a wrapper script
that logs each call and execs the real QEMU, swapping ``-accel kvm`` for
``-accel tcg`` so the probe succeeds in ~0.1 s on any host (with or without a
working KVM). ``/dev/kvm`` and the boot id are redirected to temp files the
test controls via the module's path constants.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from minivisor import procfs
from minivisor.host import accel, facts, info
from minivisor.errors import HostError

SOURCE = Path(accel.__file__).parent / "kvmprobe.S"
REAL_QEMU = shutil.which("qemu-system-x86_64")


def needs_qemu(test):
    """A test that runs the real qemu-system-x86_64 (the probe guest boots): marked ``qemu``, skipped without it."""
    return pytest.mark.qemu(pytest.mark.skipif(REAL_QEMU is None, reason="qemu-system-x86_64 is not installed")(test))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MINIVISOR_ACCEL", "MINIVISOR_QEMU"):
        monkeypatch.delenv(name, raising=False)


class CountingQemu:
    """A qemu-system-x86_64 wrapper that records calls and runs the real one under TCG."""

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "qemu-wrapper"
        self.log = tmp / "qemu-calls.log"
        self.path.write_text(
            "#!/bin/bash\n"
            f'echo "$*" >> "{self.log}"\n'
            "args=()\n"
            'for a in "$@"; do [ "$a" = kvm ] && a=tcg; args+=("$a"); done\n'
            f'exec "{REAL_QEMU or "qemu-system-x86_64"}" "${{args[@]}}"\n'
        )
        self.path.chmod(0o755)

    @property
    def calls(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0


# The wrapped probe takes ~0.1 s; a loaded 2-core machine can take seconds to start QEMU at all.
# These tests count probes and read the cache: a probe that merely ran slowly must not turn into "tcg".
LOADED_MACHINE_PROBE_TIMEOUT = 120.0


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the module at a boot id file and a read-write '/dev/kvm' stand-in."""
    boot_id = tmp_path / "boot_id"
    boot_id.write_text(f"{uuid.uuid4()}\n")
    kvm = tmp_path / "kvm"
    kvm.write_bytes(b"")
    monkeypatch.setattr(accel, "_BOOT_ID", str(boot_id))
    monkeypatch.setattr(accel, "_KVM_DEVICE", str(kvm))
    monkeypatch.setattr(accel, "PROBE_TIMEOUT", LOADED_MACHINE_PROBE_TIMEOUT)
    monkeypatch.setattr(accel, "PROBE_STALL", LOADED_MACHINE_PROBE_TIMEOUT)
    return tmp_path


@pytest.fixture
def qemu(tmp_path: Path) -> CountingQemu:
    """The counting wrapper; the tests that let it run QEMU are ``needs_qemu``, the others count no call."""
    return CountingQemu(tmp_path)


# --- the probe image ---------------------------------------------------------


def test_probe_image_is_a_boot_sector() -> None:
    assert len(accel.PROBE_IMAGE) == 512
    assert accel.PROBE_IMAGE[-2:] == b"\x55\xaa"


def _assembled(source: Path, origin: str, tmp_path: Path) -> bytes:
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip(f"binutils (as, ld) not installed: cannot reassemble {source.name}")
    obj, binary = tmp_path / "probe.o", tmp_path / "probe.bin"
    subprocess.run(["as", "--32", "-o", obj, source], check=True, capture_output=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", origin, "--oformat", "binary", "-o", binary, obj],
                   check=True, capture_output=True)
    return binary.read_bytes()


def test_probe_image_matches_its_source(tmp_path: Path) -> None:
    assert _assembled(SOURCE, "0x7c00", tmp_path) == accel.PROBE_IMAGE, \
        "re-embed the assembled kvmprobe.S in host/accel.py"


def test_probe_firmware_ends_with_its_assembled_reset_stub(tmp_path: Path) -> None:
    stub = _assembled(SOURCE.with_name("kvmprobe_reset.S"), "0xff00", tmp_path)
    firmware = accel.probe_firmware()
    assert len(stub) == 0x100 and len(firmware) == 0x10000
    assert firmware[-0x100:] == stub, "re-embed the assembled kvmprobe_reset.S in host/accel.py"
    assert firmware[:512] == accel.PROBE_IMAGE and firmware[512:-0x100] == bytes(len(firmware) - 512 - 0x100)


# --- AccelChoice and ProbeRun ------------------------------------------------


def test_warning_is_none_for_kvm_and_one_line_for_tcg() -> None:
    assert accel.AccelChoice("kvm", "KVM probe: fine").warning is None
    warning = accel.AccelChoice("tcg", "broken\nbadly; using TCG").warning
    assert warning is not None and "\n" not in warning and "broken badly; using TCG" in warning


def _run(returncode: int | None, serial: bytes = b"", stderr: str = "") -> accel.ProbeRun:
    return accel.ProbeRun("kvm", 3.0, returncode, serial, stderr, 1.0, 1)


@pytest.mark.parametrize(
    ("serial", "words"),
    [
        (b"", "gave no sign of life within 3 s"),
        (b"RP", "did not reach long mode (no progress for 1 s)"),
        (b"RPLM", "reached long mode but did not finish a few milliseconds of 64-bit work (no progress for 1 s)"),
    ],
)
def test_a_killed_probe_names_the_stage_reached(serial: bytes, words: str) -> None:
    run = _run(None, serial)
    assert run.timed_out and not run.ok
    assert run.failure == f"a 64-bit guest {words}"


def test_exit_statuses_are_explained() -> None:
    assert _run(99, b"RPLMCLM64OK\r\n").failure is None
    assert not _run(99, b"RPLMC").ok  # success code without the marker is not success
    assert "wrong 64-bit result" in (_run(105).failure or "")
    assert "triple fault" in (_run(0).failure or "")
    failure = _run(1, stderr="warning: x\nqemu: Could not access KVM kernel module\n").failure
    assert failure == "QEMU exited with status 1: qemu: Could not access KVM kernel module"


# --- probe_kvm without a usable device ---------------------------------------


def test_missing_kvm_device_means_tcg_without_running_qemu(
    fake_host: Path, qemu: CountingQemu, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "_KVM_DEVICE", str(fake_host / "no-such-kvm"))
    choice = accel.probe_kvm(str(qemu.path))
    assert choice.accel == "tcg" and "does not exist" in choice.reason and "using TCG" in choice.reason
    assert qemu.calls == 0


def test_unopenable_kvm_device_means_tcg(fake_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "_KVM_DEVICE", str(fake_host))  # a directory: EISDIR, even for root
    choice = accel.probe_kvm("/nonexistent/qemu")
    assert choice.accel == "tcg" and "cannot be opened" in choice.reason


# --- choose_accel: cache ------------------------------------------------------


@needs_qemu
def test_cache_hit_does_not_run_qemu(fake_host: Path, qemu: CountingQemu) -> None:
    cache = fake_host / "cache"
    first = accel.choose_accel(cache, str(qemu.path))
    assert (first.accel, first.probed, qemu.calls) == ("kvm", True, 1)
    second = accel.choose_accel(cache, str(qemu.path))
    assert (second.accel, second.reason, second.probed) == (first.accel, first.reason, False)
    assert qemu.calls == 1


@needs_qemu
def test_new_boot_id_reprobes(fake_host: Path, qemu: CountingQemu) -> None:
    accel.choose_accel(fake_host / "cache", str(qemu.path))
    (fake_host / "boot_id").write_text(f"{uuid.uuid4()}\n")
    assert accel.choose_accel(fake_host / "cache", str(qemu.path)).probed
    assert qemu.calls == 2


@needs_qemu
def test_changed_qemu_binary_reprobes(fake_host: Path, qemu: CountingQemu) -> None:
    accel.choose_accel(fake_host / "cache", str(qemu.path))
    st = qemu.path.stat()
    os.utime(qemu.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert accel.choose_accel(fake_host / "cache", str(qemu.path)).probed
    assert qemu.calls == 2


@needs_qemu
def test_recreated_or_vanished_kvm_device_reprobes(fake_host: Path, qemu: CountingQemu) -> None:
    cache, kvm = fake_host / "cache", fake_host / "kvm"
    accel.choose_accel(cache, str(qemu.path))
    kvm.unlink()
    gone = accel.choose_accel(cache, str(qemu.path))
    assert gone.probed and gone.accel == "tcg" and qemu.calls == 1  # no device: no QEMU run
    kvm.write_bytes(b"")  # a new node, as after a module reload
    back = accel.choose_accel(cache, str(qemu.path))
    assert back.probed and back.accel == "kvm" and qemu.calls == 2


@needs_qemu
@pytest.mark.parametrize("junk", [b"", b"{not json", b"[1, 2]", b'{"key": 1}', b"\xff\xfe", b'"x"'])
def test_corrupt_cache_is_ignored_and_rewritten(fake_host: Path, qemu: CountingQemu, junk: bytes) -> None:
    cache = fake_host / "cache"
    cache.mkdir()
    (cache / "accel.json").write_bytes(junk)
    assert accel.choose_accel(cache, str(qemu.path)).probed
    data = json.loads((cache / "accel.json").read_text())
    assert data["accel"] == "kvm" and data["key"]["boot_id"]
    assert accel.choose_accel(cache, str(qemu.path)).probed is False
    assert qemu.calls == 1


@needs_qemu
def test_cache_write_leaves_no_temp_files(fake_host: Path, qemu: CountingQemu) -> None:
    accel.choose_accel(fake_host / "deep" / "cache", str(qemu.path))
    assert [p.name for p in (fake_host / "deep" / "cache").iterdir()] == ["accel.json"]


@needs_qemu
def test_unwritable_cache_dir_still_answers(fake_host: Path, qemu: CountingQemu) -> None:
    blocker = fake_host / "file"
    blocker.write_text("not a directory")
    assert accel.choose_accel(blocker / "cache", str(qemu.path)).accel == "kvm"


# --- choose_accel: MINIVISOR_ACCEL ------------------------------------------


def test_forced_tcg_skips_the_probe(fake_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIVISOR_ACCEL", "tcg")
    choice = accel.choose_accel(fake_host / "cache", "/nonexistent/qemu")
    assert (choice.accel, choice.probed) == ("tcg", False)
    assert "MINIVISOR_ACCEL=tcg" in choice.reason and choice.warning
    assert not (fake_host / "cache").exists()


def test_unknown_accel_value_is_an_error(fake_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIVISOR_ACCEL", "hvf")
    with pytest.raises(HostError, match="MINIVISOR_ACCEL"):
        accel.choose_accel(fake_host / "cache", "/nonexistent/qemu")


@needs_qemu
def test_auto_and_empty_mean_probe(fake_host: Path, qemu: CountingQemu, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIVISOR_ACCEL", " AUTO ")
    assert accel.choose_accel(fake_host / "cache", str(qemu.path)).accel == "kvm"
    monkeypatch.setenv("MINIVISOR_ACCEL", "")
    assert accel.choose_accel(fake_host / "cache", str(qemu.path)).accel == "kvm"
    assert qemu.calls == 1


def test_forced_kvm_fails_loudly_when_kvm_is_unusable(
    fake_host: Path, qemu: CountingQemu, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIVISOR_ACCEL", "kvm")
    monkeypatch.setattr(accel, "_KVM_DEVICE", str(fake_host / "no-such-kvm"))
    with pytest.raises(HostError) as info:
        accel.choose_accel(fake_host / "cache", str(qemu.path))
    assert "does not exist" in info.value.message and "using TCG" not in info.value.message
    assert info.value.hint and "MINIVISOR_ACCEL=auto" in info.value.hint
    assert qemu.calls == 0  # no device: nothing to probe


@needs_qemu
def test_forced_kvm_reprobes_a_cached_failure(
    fake_host: Path, qemu: CountingQemu, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = fake_host / "cache"
    key = accel._cache_key(str(qemu.path))
    accel._write_cache(cache / "accel.json", key, accel.AccelChoice("tcg", "stale failure"))
    assert accel.choose_accel(cache, str(qemu.path)).reason == "stale failure"  # auto trusts it
    monkeypatch.setenv("MINIVISOR_ACCEL", "kvm")
    choice = accel.choose_accel(cache, str(qemu.path))
    assert (choice.accel, choice.probed, qemu.calls) == ("kvm", True, 1)


# --- host facts ----------------------------------------------------------------


def test_find_qemu_honours_env_and_reports_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = tmp_path / "my-qemu"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("MINIVISOR_QEMU", str(program))
    assert facts.find_qemu() == str(program)
    monkeypatch.setenv("MINIVISOR_QEMU", str(tmp_path / "missing"))
    with pytest.raises(HostError, match="MINIVISOR_QEMU"):
        facts.find_qemu()
    monkeypatch.delenv("MINIVISOR_QEMU")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(HostError, match="qemu-system-x86_64 not found") as info:
        facts.find_qemu()
    assert info.value.hint == "apt-get install qemu-system-x86"
    with pytest.raises(HostError, match="qemu-img not found") as info:
        facts.find_qemu_img()
    assert info.value.hint == "apt-get install qemu-utils"


def test_memory_comes_from_meminfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        2097152 kB\nMemFree: 1 kB\nMemAvailable:    1048576 kB\n")
    monkeypatch.setattr(procfs, "MEMINFO", str(meminfo))
    assert (facts.host_memory_mib(), facts.available_memory_mib()) == (2048, 1024)
    meminfo.write_text("MemTotal: 1 kB\n")
    with pytest.raises(HostError, match="MemAvailable"):
        facts.available_memory_mib()


def test_real_host_memory_is_read() -> None:
    assert 0 < facts.available_memory_mib() <= facts.host_memory_mib()


def test_host_cpus_are_the_ones_this_process_may_run_on() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one CPU: a count that ignored the affinity would give the same answer")
    pinned = subprocess.run(["taskset", "-c", str(allowed[-1]), sys.executable, "-c",
                             "from minivisor.host import facts; print(facts.host_cpus())"],
                            capture_output=True, text=True, check=True)
    assert pinned.stdout.strip() == "1"


@needs_qemu
def test_qemu_version_and_host_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert facts.qemu_version(str(REAL_QEMU))[0].isdigit()
    with pytest.raises(HostError):
        facts.qemu_version(str(tmp_path / "missing"))
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    monkeypatch.setenv("MINIVISOR_ACCEL", "tcg")  # host_info's probe is covered elsewhere
    data = info.host_info(tmp_path / "cache").to_dict()
    json.dumps(data)
    assert data["accel"]["accel"] == "tcg" and data["accel"]["warning"]
    assert data["kernel"] == os.uname().release and data["cpus"] >= 1
