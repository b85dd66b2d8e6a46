"""Which accelerator VMs get: KVM only after a real probe, else TCG, and why.

KVM is chosen only after a real probe: a tiny guest (``kvmprobe.S``), run as
the VM's firmware (``kvmprobe_reset.S``: no SeaBIOS), must reach long mode and
finish a short 64-bit workload under ``-accel kvm``. It prints a byte at each
stage, so the probe waits :data:`PROBE_TIMEOUT` for the first one (QEMU's start
on a loaded host) and then only :data:`PROBE_STALL` between two of them. A
``/dev/kvm`` that exists but cannot run 64-bit guests at speed falls back to
TCG, and the reason says so. The answer is cached per boot.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import zlib
from pathlib import Path

from ..errors import HostError
from ..files import write_atomic
from ..records import Record
from .facts import find_qemu

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any, Literal

__all__ = ["PROBE_IMAGE", "PROBE_STALL", "PROBE_TIMEOUT", "AccelChoice", "ProbeRun", "choose_accel", "probe_kvm", "run_probe"]

# kvmprobe.S assembled (see its header); zero padding and the 55 aa
# signature are added below. tests/unit/test_host.py checks they match.
_PROBE_CODE = bytes.fromhex(
    "fa31c08ed88ec08ed0bc007cea117c0000baf803b052eee4920c0224fee6920f0116907d0f20c06683c8010f22c0ea33"
    "7c080066b810008ed88ec08ed0bc007c000066baf803b050eebf0010000031c0b9000c0000fcf3abc705001000000320"
    "0000c7050020000003300000bf00300000b883000000b9080000008907050000200083c708e2f40f20e083c8200f22e0"
    "b8001000000f22d8b9800000c00f320d000100000f300f20c00d000000800f22c0eab87c00001800b9800000c00f32b3"
    "320fbae00a0f839b00000066baf803b04ceebf0000100048893f4881c7001000004881ff0000f00072edbf00001000b3"
    "3348393f75704881c7001000004881ff0000f00072ebb04dee48b8157c4a7fb979379eb9000040004889c648c1e60d48"
    "31f04889c648c1ee074831f04889c648c1e6114831f0ffc975de48be4c0b3e58714aec30b3344839f0751bb043ee48b8"
    "4c4d36344f4b0d0ab908000000ee48c1e808e2f9b33188d8e6f4f4ebfd8d76000000000000000000ffff0000009acf00"
    "ffff00000092cf00ffff0000009aaf001f00707d"
)
PROBE_IMAGE = _PROBE_CODE.ljust(510, b"\0") + b"\x55\xaa"
# kvmprobe_reset.S assembled: copies the probe from the firmware image to 0x7c00 and jumps there;
# the CPU's reset vector (F000:FFF0) jumps to it. tests/unit/test_host.py checks they match.
_RESET_STUB = (bytes.fromhex("fafc31c08ec0bf007cb800f08ed831f6b90001f3a5ea007c").ljust(0xF0, b"\0")
               + bytes.fromhex("ea00ff00f0").ljust(0x10, b"\0"))
_FIRMWARE_SIZE = 0x10000  # QEMU maps a 64 KiB -bios image at 0xF0000-0xFFFFF (and below 4 GiB)


def probe_firmware(image: bytes = PROBE_IMAGE) -> bytes:
    """A 64 KiB firmware image that runs the 512-byte boot sector ``image`` at 0x7c00."""
    return image.ljust(_FIRMWARE_SIZE - len(_RESET_STUB), b"\0") + _RESET_STUB

_PROBE_MARKER = b"LM64OK"
_PROBE_EXIT_OK = (0x31 << 1) | 1  # isa-debug-exit turns code c into status (c<<1)|1
_EXIT_MEANINGS = {
    0: "the probe guest crashed (triple fault) before finishing",
    (0x32 << 1) | 1: "the probe guest ran 64-bit code without EFER.LMA set",
    (0x33 << 1) | 1: "the probe guest read back different memory than it wrote",
    (0x34 << 1) | 1: "the probe guest computed a wrong 64-bit result",
}
# Last progress byte the guest printed -> where it stalled (see kvmprobe.S).
_STALLED_AT = {
    "": "gave no sign of life",
    "R": "did not leave real mode",
    "P": "did not reach long mode",
    "L": "reached long mode but did not finish its memory check",
    "M": "reached long mode but did not finish a few milliseconds of 64-bit work",
    "C": "finished but did not exit",
}
_USING_TCG = "; using TCG (software emulation, slower)"

# Seconds the probe guest gets under KVM to print its first byte (QEMU's start, on a
# loaded host), then between two bytes: a working KVM needs milliseconds for any stage.
# Module-level (like the paths below) so tests on a loaded machine can give them more.
PROBE_TIMEOUT = 3.0
PROBE_STALL = 1.0

# Module-level so tests can point them at files they control.
_KVM_DEVICE = "/dev/kvm"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


class AccelChoice(Record, frozen=True):
    """Which accelerator VMs get, why, and whether a probe ran just now."""

    accel: Literal["kvm", "tcg"]
    reason: str
    probed: bool = True

    @property
    def warning(self) -> str | None:
        """A one-line warning for the user when guests will run without KVM."""
        if self.accel == "kvm":
            return None
        return " ".join(self.reason.split())


class ProbeRun(Record, frozen=True):
    """The outcome of booting one probe image under one accelerator."""

    accel: str
    timeout: float
    returncode: int | None  # None when QEMU was killed: no first byte within timeout, or a stall
    serial: bytes
    stderr: str
    elapsed: float
    pid: int
    stall: float = PROBE_STALL

    @property
    def timed_out(self) -> bool:
        """True when QEMU had to be killed."""
        return self.returncode is None

    @property
    def ok(self) -> bool:
        """True when the guest printed the marker and exited with the success code."""
        return self.returncode == _PROBE_EXIT_OK and _PROBE_MARKER in self.serial

    @property
    def failure(self) -> str | None:
        """What went wrong, in words, or None on success."""
        if self.ok:
            return None
        if self.timed_out:
            progress = self.serial.partition(_PROBE_MARKER)[0].decode("latin-1")
            stage = next((c for c in reversed(progress) if c in _STALLED_AT), "")
            if not stage:
                return f"a 64-bit guest {_STALLED_AT[stage]} within {self.timeout:g} s"
            return f"a 64-bit guest {_STALLED_AT[stage]} (no progress for {self.stall:g} s)"
        if self.returncode in _EXIT_MEANINGS:
            return _EXIT_MEANINGS[self.returncode]
        detail = self.stderr.strip().splitlines()[-1:] or ["no error message"]
        return f"QEMU exited with status {self.returncode}: {detail[0]}"


def _probe_command(qemu_binary: str, accel: str, firmware: Path, serial: Path) -> list[str]:
    """The QEMU command line that runs ``firmware`` with COM1 going to ``serial``."""
    return [
        qemu_binary, "-accel", accel, "-machine", "pc", "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-m", "16", "-name", "minivisor-accel-probe",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-serial", f"file:{serial}",
        "-bios", str(firmware),
    ]  # fmt: skip


def _run_while_progressing(cmd: list[str], serial: Path, timeout: float, stall: float) -> tuple[int | None, str, int]:
    """Run ``cmd``; return (its status, or None if killed, stderr, pid). It is killed when ``serial`` has no
    byte ``timeout`` s after the start, or gains none for ``stall`` s after that."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as exc:
        raise HostError(f"cannot run {cmd[0]}: {exc.strerror}") from exc
    try:
        seen, deadline = 0, time.monotonic() + timeout
        while proc.poll() is None:
            size = serial.stat().st_size if serial.exists() else 0
            if size > seen:
                seen, deadline = size, time.monotonic() + stall
            elif time.monotonic() > deadline:
                proc.kill()
                return None, proc.communicate()[1], proc.pid
            time.sleep(0.005)
        return proc.returncode, proc.communicate()[1], proc.pid
    finally:
        if proc.poll() is None:  # interrupted (e.g. Ctrl-C): leave no QEMU behind
            proc.kill()
            proc.wait()


def run_probe(qemu_binary: str, accel: str, timeout: float = PROBE_TIMEOUT, image: bytes = PROBE_IMAGE,
              stall: float = PROBE_STALL) -> ProbeRun:
    """Run the boot sector ``image`` as firmware under ``-accel accel``; kill it if it prints nothing within
    ``timeout`` s, or nothing more for ``stall`` s."""
    import tempfile  # here: the probe runs once per host (its answer is cached); every power-on imports this module

    with tempfile.TemporaryDirectory(prefix="minivisor-probe-") as tmp:
        firmware, serial = Path(tmp, "probe.bin"), Path(tmp, "serial.log")
        firmware.write_bytes(probe_firmware(image))
        start = time.monotonic()
        status, err, pid = _run_while_progressing(_probe_command(qemu_binary, accel, firmware, serial), serial,
                                                  timeout, stall)
        elapsed = time.monotonic() - start
        output = serial.read_bytes() if serial.exists() else b""
    return ProbeRun(accel, timeout, status, output, err, elapsed, pid, stall)


def _kvm_device_problem() -> str | None:
    """Why /dev/kvm cannot be used at all, or None if it opens read-write."""
    try:
        fd = os.open(_KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{_KVM_DEVICE} does not exist (no KVM module loaded or no hardware virtualisation)"
    except PermissionError:
        return f"{_KVM_DEVICE} cannot be opened read-write (add this user to the 'kvm' group)"
    except OSError as exc:
        return f"{_KVM_DEVICE} cannot be opened: {exc.strerror}"
    os.close(fd)
    return None


def _tcg(why: str, *, probed: bool) -> AccelChoice:
    return AccelChoice("tcg", why + _USING_TCG, probed)


def probe_kvm(qemu_binary: str, timeout: float | None = None) -> AccelChoice:
    """Decide KVM or TCG by booting the probe guest under KVM (never trusts /dev/kvm).

    ``timeout`` defaults to :data:`PROBE_TIMEOUT`.
    """
    if problem := _kvm_device_problem():
        return _tcg(problem, probed=True)
    run = run_probe(qemu_binary, "kvm", PROBE_TIMEOUT if timeout is None else timeout, stall=PROBE_STALL)
    if run.ok:
        return AccelChoice("kvm", f"KVM probe: a 64-bit guest booted and ran in {run.elapsed:.2f} s")
    return _tcg(f"KVM probe: {run.failure} ({_KVM_DEVICE} is present but unusable)", probed=True)


def _cache_key(qemu_binary: str) -> dict[str, Any]:
    """Everything that can change the probe's answer; cheap (a few stats, one read)."""
    try:
        boot_id = Path(_BOOT_ID).read_text().strip()
    except OSError:
        boot_id = ""
    try:
        q = os.stat(qemu_binary)
        qemu = [os.path.abspath(qemu_binary), q.st_size, q.st_mtime_ns, q.st_ino]
    except OSError as exc:
        raise HostError(f"cannot use QEMU binary {qemu_binary}: {exc.strerror}") from exc
    try:
        # ino/ctime change when the node is recreated (module reload) or re-permissioned.
        k = os.stat(_KVM_DEVICE)
        kvm = [k.st_rdev, k.st_ino, k.st_ctime_ns, os.access(_KVM_DEVICE, os.R_OK | os.W_OK)]
    except OSError:
        kvm = None
    probe = zlib.crc32(probe_firmware())  # a new probe guest must not trust old answers
    return {"boot_id": boot_id, "qemu": qemu, "kvm": kvm, "probe": probe}


def _read_cache(path: Path, key: dict[str, Any]) -> AccelChoice | None:
    """The cached choice if it was made under ``key``; None if absent, stale or corrupt."""
    try:
        data = json.loads(path.read_bytes())
        if data["key"] == key and data["accel"] in ("kvm", "tcg"):
            return AccelChoice(data["accel"], str(data["reason"]), probed=False)
    except (OSError, ValueError, TypeError, KeyError):
        pass  # corrupt or unreadable: the caller re-probes and rewrites it
    return None


def _write_cache(path: Path, key: dict[str, Any], choice: AccelChoice) -> None:
    """Store ``choice`` atomically (temp file + rename); failure only costs a re-probe."""
    data = json.dumps({"key": key, "accel": choice.accel, "reason": choice.reason})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data.encode())
    except OSError:
        pass  # read-only cache dir: caching is an optimisation, never a reason to fail


def choose_accel(cache_dir: Path, qemu_binary: str | None = None) -> AccelChoice:
    """The accelerator for VMs, honouring ``MINIVISOR_ACCEL`` (auto|kvm|tcg), cached per boot."""
    raw = os.environ.get("MINIVISOR_ACCEL", "")
    mode = raw.strip().lower() or "auto"
    if mode not in ("auto", "kvm", "tcg"):
        raise HostError(f"MINIVISOR_ACCEL={raw!r} is not one of auto, kvm, tcg", hint="unset it or set it to auto")
    if mode == "tcg":
        return _tcg("MINIVISOR_ACCEL=tcg forces software emulation, KVM not probed", probed=False)
    qemu = qemu_binary or find_qemu()
    path, key = Path(cache_dir) / "accel.json", _cache_key(qemu)
    choice = _read_cache(path, key)
    # A forced kvm re-probes a cached failure: the user may just have fixed KVM.
    if choice is None or (mode == "kvm" and choice.accel != "kvm"):
        choice = probe_kvm(qemu)
        _write_cache(path, key, choice)
    if mode == "kvm" and choice.accel != "kvm":
        raise HostError(
            f"MINIVISOR_ACCEL=kvm but KVM is unusable: {choice.reason.removesuffix(_USING_TCG)}",
            hint="fix KVM (dmesg, /dev/kvm permissions, nested virtualisation) or set MINIVISOR_ACCEL=auto",
        )
    return choice
