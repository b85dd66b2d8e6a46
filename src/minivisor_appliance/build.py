"""The test guest ("appliance"): a small BIOS-bootable raw disk built from Debian packages.

The image is a whole-disk FAT filesystem ("superfloppy") carrying SYSLINUX, a
kernel built here and an initramfs written here: busybox and the guest init
(``init`` beside this module). The guest prints one inventory line and one
ready line on the serial console (see ``INVENTORY_PREFIX`` and
``READY_LINE``), then serves a root shell there; the ACPI power button powers
it off.

The kernel is compiled from Debian's ``linux-source-6.1`` package with a
small configuration of our own (``kernel.config`` beside this module, on top
of ``make allnoconfig``): every driver for the hardware minivisor emulates is
built in, and nothing else is, so the guest boots in 64 MiB and has no
modules to load. It is built once per source version, configuration and
build recipe, and cached in ``kernels/`` beside the images.

Nothing is mounted and no loop device is used: the filesystem is made with
``mkfs.fat`` and filled with mtools, so the build needs no privileges beyond
downloading packages (``apt-get download``).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.resources
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from minivisor.errors import ImageBuildError
from minivisor.locks import try_lock

__all__ = [
    "IMAGE_SIZE",
    "INVENTORY_PREFIX",
    "READY_LINE",
    "build_appliance",
]

INVENTORY_PREFIX = "minivisor-guest: inventory "
"""Start of the console line whose remainder is the guest's JSON inventory."""

READY_LINE = "minivisor-guest: ready"
"""Console line printed once the guest's serial shell is about to start."""

IMAGE_SIZE = 64 * 1024 * 1024
"""Size in bytes of the raw appliance image (the guest sees a disk this big)."""

_KERNEL_SOURCE = "linux-source-6.1"
_BUSYBOX_PACKAGE = "busybox-static"
# Debian's programs the guest carries (package: the program's path), each with the shared libraries it
# loads (found by reading the NEEDED entries of each ELF file, in the packages its Depends name, breadth
# first): the QEMU guest agent, and udevadm, whose net_id builtin says the names udev gives a NIC
# (`udevadm test-builtin net_id /sys/class/net/eth0`: ID_NET_NAME_SLOT=ens160).
_GUEST_PROGRAMS = {"qemu-guest-agent": "usr/sbin/qemu-ga", "udev": "bin/udevadm"}
_LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
# qemu-ga's guest-shutdown runs `/sbin/shutdown -h -P +0 MESSAGE`; busybox has no shutdown applet.
_SHUTDOWN_SCRIPT = b"#!/bin/sh\n# qemu-ga's guest-shutdown: power off through PID 1, as busybox poweroff does.\nexec poweroff\n"

# How the kernel is built from its unpacked source: make's variables, and the
# arguments of its two steps. With the source's version, the compiler's and
# the configuration, this recipe is the key of a built kernel in the cache.
_KERNEL_MAKE = (
    "ARCH=x86_64",
    # Debian 12 builds its kernels with gcc-12.
    "CC=gcc-12",
    "HOSTCC=gcc-12",
    # Fixed build stamps: the same inputs give the same kernel, whoever builds it and when.
    "KBUILD_BUILD_TIMESTAMP=1970-01-01",
    "KBUILD_BUILD_USER=minivisor",
    "KBUILD_BUILD_HOST=minivisor",
    "KBUILD_BUILD_VERSION=1",
)
# kernel.config is copied into the tree as minivisor.config.
_KERNEL_CONFIGURE = ("KCONFIG_ALLCONFIG=minivisor.config", "allnoconfig")
_KERNEL_COMPILE = ("bzImage",)
_KERNEL_IMAGE = "arch/x86/boot/bzImage"
# A build works in cache_dir/.build-XXXX, holding the lock file in it for as long as it runs.
_WORK_PREFIX = ".build-"
_WORK_LOCK = ".lock"
_BUILD_LOCK = ".build.lock"  # in cache_dir: held by the one process building the image
_UNLOCKED_WORK_AGE = 24 * 3600  # seconds: a work folder without a lock is from a build older than the locks

# The compile step says how far it is every this many files compiled (of ~1,100).
_COMPILE_PROGRESS_EVERY = 100

# Every option below is there for boot time under TCG (each was measured),
# except panic=-1, which turns a panic into a reset that QEMU's -no-reboot
# turns into exit.
_KERNEL_CMDLINE = " ".join(
    (
        "console=ttyS0,115200",
        # Serial output is slow under TCG, and kernel messages must not land
        # inside the guest's console lines: only emergencies get through.
        "quiet loglevel=1",
        "panic=-1",
        # Skip the read-only page-table work and the delay-loop calibration of
        # each CPU (udelay uses the TSC; lpj is only its fallback). Mitigations
        # are off without asking: kernel.config leaves CPU_MITIGATIONS out.
        "rodata=off lpj=10000000",
        # With one CPU the kernel would rewrite each of its lock prefixes into
        # a no-op at boot (~0.2 s under TCG); a lock prefix costs TCG nothing.
        "noreplace-smp",
        # The local APIC timer's calibration spins for 100 ms: the HPET ticks.
        "noapictimer",
        # sym53c8xx (lsi53c895a) waits 3 s after its bus reset by default.
        "sym53c8xx.settle=0",
    )
)

_SYSLINUX_CFG = f"""\
SERIAL 0 115200
DEFAULT appliance
PROMPT 0
TIMEOUT 0
LABEL appliance
  KERNEL /vmlinuz
  INITRD /initrd
  APPEND {_KERNEL_CMDLINE}
"""

# The host programs the build runs, and the Debian package providing each.
# The kernel's build also needs libelf-dev (objtool, which x86 always builds,
# links with libelf) and libc6-dev, which provide no program.
_HOST_TOOLS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "syslinux": "syslinux",
    "make": "make",
    "gcc-12": "gcc-12",
    "flex": "flex",
    "bison": "bison",
    "bc": "bc",
    "lz4": "lz4",
}
_KERNEL_BUILD_PACKAGES = "gcc-12, libc6-dev, make, flex, bison, bc, lz4 and libelf-dev"

Progress = Callable[[str], None]


def build_appliance(cache_dir: Path, *, force: bool = False, progress: Progress | None = None) -> Path:
    """Build the appliance image, or reuse the cached one; return its path.

    The image lives in ``cache_dir/images/`` under a name carrying a hash of
    the build inputs, so changing them (e.g. the guest init) builds a new one.
    Downloaded packages are kept in ``cache_dir/debs/``, the kernels built
    in ``cache_dir/kernels/``. The image is written
    to a temporary file and renamed into place, so a killed build never
    leaves a partial image under the final name. ``force`` rebuilds the image
    even when it exists (the cached kernel still serves).
    ``progress`` receives one short line per build step, and one per hundred
    files while the kernel compiles.

    Raises ImageBuildError, with a hint how to fix it, when any step fails.
    """
    say = progress or (lambda _line: None)
    cache_dir = Path(cache_dir)
    target = cache_dir / "images" / f"appliance-{_inputs_digest()[:16]}.img"
    if target.exists() and not force:
        return target
    tools = _host_tools()
    try:
        with _one_build_at_a_time(cache_dir, say):
            if target.exists() and not force:  # built by the process we waited for
                return target
            _build(cache_dir, target, tools, say)
    except OSError as err:
        raise ImageBuildError(
            f"cannot build the appliance image: {err}",
            hint=f"check free space and permissions in {cache_dir}",
        ) from err
    say(f"appliance image ready: {target}")
    return target


@contextmanager
def _one_build_at_a_time(cache_dir: Path, say: Progress) -> Iterator[None]:
    """Hold the cache's build lock: two processes that need the image at once (two test workers, two users)
    build it once, not twice side by side on the same CPUs."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / _BUILD_LOCK
    fd = try_lock(path)
    if fd is None:
        say("waiting for another build of the appliance to finish")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def _build(cache_dir: Path, target: Path, tools: dict[str, str], say: Progress) -> None:
    """Build the image into a temporary file beside ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(cache_dir)
    # The kernel's source unpacks to 1.3 GB: work beside the cache rather
    # than in a /tmp that may be a small tmpfs.
    with tempfile.TemporaryDirectory(prefix=_WORK_PREFIX, dir=cache_dir) as work:
        lock = try_lock(Path(work, _WORK_LOCK))  # held while this build runs: see remove_abandoned_builds
        assert lock is not None, "a new folder's lock is free"
        try:
            _build_in(cache_dir, Path(work), target, tools, say)
        finally:
            os.close(lock)


def remove_abandoned_builds(cache_dir: Path) -> None:
    """Remove the work folders of builds that were killed (a kernel's is 1.3 GB): those whose lock nobody holds,
    and those made before builds took one (a day old or more). A build that runs is never touched."""
    for work in Path(cache_dir).glob(f"{_WORK_PREFIX}*"):
        lock = work / _WORK_LOCK
        if lock.exists():
            fd = try_lock(lock)
            if fd is None:
                continue
            os.close(fd)
        elif time.time() - work.stat().st_mtime < _UNLOCKED_WORK_AGE:
            continue
        shutil.rmtree(work, ignore_errors=True)


def _build_in(cache_dir: Path, work: Path, target: Path, tools: dict[str, str], say: Progress) -> None:
    """The build's steps in its work folder: the kernel (or the cached one), the initramfs, the disk image."""
    apt = _Apt(tools, cache_dir / "debs", say)
    kernel = _kernel(cache_dir / "kernels", apt, work, tools, say)
    say("writing the initramfs")
    _extract_deb(apt.download(_BUSYBOX_PACKAGE), work / "busybox", tools)
    programs: dict[str, bytes] = {}
    for package, program in _GUEST_PROGRAMS.items():
        programs.update(_program_files(_Packages(apt, work / package, tools, package), program))
    initrd = work / "initrd"
    initrd.write_bytes(_initramfs(work / "busybox" / "bin" / "busybox", programs))
    say("writing the disk image")
    _publish(target, lambda partial: _write_disk(partial, kernel, initrd, tools))


def _publish(target: Path, write: Callable[[Path], object]) -> None:
    """Make ``target`` by ``write`` into a temporary file beside it, renamed into place once whole.

    So a killed build never leaves a partial file under the final name.
    """
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        write(Path(partial))
        os.chmod(partial, 0o644)  # mkstemp made it private
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)


def _inputs_digest() -> str:
    """A hash of the build inputs that live in this package.

    That is this module (the recipe: packages, the kernel's build, kernel
    command line, disk layout), the kernel's configuration and the guest
    init. The Debian packages are pinned by the copies kept in ``debs/``.
    """
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(_package_file("kernel.config"))
    h.update(_guest_init())
    return h.hexdigest()


def _package_file(name: str) -> bytes:
    """A file shipped beside this module as package data."""
    return importlib.resources.files("minivisor_appliance").joinpath(name).read_bytes()


def _guest_init() -> bytes:
    """The guest's init script."""
    return _package_file("init")


def _host_tools() -> dict[str, str]:
    """The absolute path of every host program the build needs."""
    # mkfs.fat lives in /usr/sbin, which is not on a normal user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = {}
    for tool, package in _HOST_TOOLS.items():
        path = shutil.which(tool, path=search)
        if path is None:
            raise ImageBuildError(
                f"cannot build the appliance image: host program {tool} is missing",
                hint=f"install the Debian package {package} (apt-get install {package})",
            )
        found[tool] = path
    return found


def _extract_deb(deb: Path, into: Path, tools: dict[str, str]) -> None:
    """Unpack a package's files under ``into``."""
    _run([tools["dpkg-deb"], "-x", str(deb), str(into)], hint=f"delete {deb} and build again")


class _Apt:
    """Package lookups and downloads that refresh apt's lists once on failure.

    A fresh Debian host (or a container) often has stale or no package lists;
    as root the build runs ``apt-get update`` once and retries, otherwise the
    error says to run it.
    """

    def __init__(self, tools: dict[str, str], debs: Path, say: Progress) -> None:
        self._tools = tools
        self._debs = debs
        self._say = say
        self._updated = False

    def candidate_version(self, package: str) -> str:
        """The version of ``package`` that apt would install now."""
        self._say(f"resolving {package}")
        show = self._run_apt([self._tools["apt-cache"], "show", "--no-all-versions", package])
        version = re.search(r"^Version:\s*(\S+)", show, re.MULTILINE)
        if version is None:
            raise ImageBuildError(f"apt-cache shows no version of {package}", hint=_APT_SOURCES_HINT)
        return version.group(1)

    def download(self, package: str, version: str = "") -> Path:
        """The package's .deb (this version, if given) in the cache, downloaded unless already there."""
        # apt names a file package_version_arch.deb, the epoch's colon as %3a.
        pattern = f"{package}_{version.replace(':', '%3a') or '*'}_*.deb"
        cached = sorted(self._debs.glob(pattern), key=lambda p: p.stat().st_mtime)
        if cached:
            return cached[-1]
        self._say(f"downloading {package}")
        self._debs.mkdir(parents=True, exist_ok=True)
        # Download beside the cache and move the file in, so an interrupted
        # download never looks like a cached package.
        with tempfile.TemporaryDirectory(prefix=".download-", dir=self._debs) as tmp:
            wanted = f"{package}={version}" if version else package
            self._run_apt([self._tools["apt-get"], "download", wanted], cwd=Path(tmp))
            fetched = list(Path(tmp).glob(pattern))
            if len(fetched) != 1:
                raise ImageBuildError(f"apt-get download {wanted} produced no package file")
            final = self._debs / fetched[0].name
            os.replace(fetched[0], final)
        return final

    def _run_apt(self, argv: list[str], cwd: Path | None = None) -> str:
        """Run an apt program, after one ``apt-get update`` if it fails as root."""
        try:
            return _run_raw(argv, cwd)
        except _CommandFailed as err:
            failure = f"{Path(argv[0]).name} {' '.join(argv[1:])} failed: {err.detail}"
        if os.geteuid() != 0:
            raise ImageBuildError(failure, hint="run `apt-get update` as root, then build again")
        if self._updated:
            raise ImageBuildError(failure, hint=_APT_SOURCES_HINT)
        self._say("refreshing the package lists (apt-get update)")
        self._updated = True
        _run([self._tools["apt-get"], "update"], hint=_APT_SOURCES_HINT)
        return self._run_apt(argv, cwd)


_APT_SOURCES_HINT = "check that /etc/apt/sources.list names a reachable Debian archive"


def _kernel(cache: Path, apt: _Apt, work: Path, tools: dict[str, str], say: Progress) -> Path:
    """The kernel image for the current ``_KERNEL_SOURCE``, built unless already in ``cache``.

    Its name carries the source's version and a hash of the whole recipe
    (``_kernel_key``), so a new source, compiler or configuration builds anew.
    """
    version = apt.candidate_version(_KERNEL_SOURCE)
    config = _package_file("kernel.config")
    target = cache / f"vmlinuz-{version}-{_kernel_key(version, config, tools)}"
    if target.exists():
        say(f"reusing the kernel built before: {target.name}")
        return target
    tree = _unpack_kernel_source(apt.download(_KERNEL_SOURCE, version), work, tools, say)
    (tree / "minivisor.config").write_bytes(config)
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "build.log"
    say("configuring the kernel: allnoconfig and kernel.config")
    _make(tree, _KERNEL_CONFIGURE, tools, log, say)
    _check_config(tree / ".config", config.decode())
    say("compiling the kernel (~1,100 files; minutes, more on a busy host)")
    _make(tree, _KERNEL_COMPILE, tools, log, say)
    _publish(target, lambda partial: shutil.copyfile(tree / _KERNEL_IMAGE, partial))
    return target


def _kernel_key(version: str, config: bytes, tools: dict[str, str]) -> str:
    """A hash of everything that makes the kernel's bytes: source, compiler, recipe, configuration."""
    compiler = _run([tools["gcc-12"], "--version"], hint="reinstall gcc-12").splitlines()[0]
    recipe = repr((_KERNEL_SOURCE, version, compiler, _KERNEL_MAKE, _KERNEL_CONFIGURE, _KERNEL_COMPILE))
    return hashlib.sha256(recipe.encode() + config).hexdigest()[:16]


def _unpack_kernel_source(deb: Path, work: Path, tools: dict[str, str], say: Progress) -> Path:
    """Unpack the kernel source tarball that ``deb`` carries into ``work``; return the tree."""
    _extract_deb(deb, work / "package", tools)
    tarball = work / "package" / "usr" / "src" / f"{_KERNEL_SOURCE}.tar.xz"
    say(f"unpacking {tarball.name}")
    try:
        # Read as a stream: seeking back in an xz file means inflating it again.
        with tarfile.open(tarball, "r|xz") as archive:
            for member in archive:
                _unpack_member(archive, member, work)
    except (tarfile.TarError, EOFError, lzma.LZMAError) as err:
        raise ImageBuildError(f"cannot read {tarball.name}: {err}", hint=f"delete {deb} and build again") from None
    tree = work / _KERNEL_SOURCE
    if not (tree / "Makefile").is_file():
        raise ImageBuildError(
            f"{tarball.name} holds no {_KERNEL_SOURCE}/Makefile", hint=f"delete {deb} and build again"
        )
    return tree


def _unpack_member(archive: tarfile.TarFile, member: tarfile.TarInfo, into: Path) -> None:
    """Write a folder or regular file of the source tarball under ``into``.

    A name that would leave ``into`` is refused. Links are left out: the x86
    build needs none of the tarball's (they serve device trees and self-tests),
    and leaving them out means no write can follow one out of ``into``.
    """
    parts = PurePosixPath(member.name).parts
    if not parts or parts[0] == "/" or ".." in parts:
        raise ImageBuildError(
            f"the kernel source tarball holds the unsafe name {member.name!r}",
            hint=f"delete {_KERNEL_SOURCE}_*.deb in the cache and build again",
        )
    path = into.joinpath(*parts)
    if member.isdir():
        path.mkdir(parents=True, exist_ok=True)
    elif member.isfile():
        path.parent.mkdir(parents=True, exist_ok=True)
        with archive.extractfile(member) as source, path.open("wb") as out:
            shutil.copyfileobj(source, out)
        if member.mode & 0o111:
            path.chmod(0o755)  # the build runs some of its scripts directly


def _make(tree: Path, args: tuple[str, ...], tools: dict[str, str], log: Path, say: Progress) -> None:
    """Run one step of the kernel's build in ``tree``, its output into ``log``.

    make sees no variable of the caller's environment but PATH, so none
    (ARCH, KCFLAGS, KBUILD_OUTPUT...) changes what the recipe builds.
    """
    jobs = f"-j{len(os.sched_getaffinity(0))}"
    argv = [tools["make"], "-C", str(tree), jobs, *_KERNEL_MAKE, *args]
    env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        compiled = 0
        for line in proc.stdout:
            out.write(line)
            # Kbuild prints one "  CC      path" line per file it compiles.
            if line.startswith("  CC "):
                compiled += 1
                if compiled % _COMPILE_PROGRESS_EVERY == 0:
                    say(f"compiling the kernel: {compiled} files compiled")
    if proc.wait() != 0:
        raise ImageBuildError(
            f"building the appliance's kernel failed: {_first_error(log)}",
            hint=f"see {log}; the build needs {_KERNEL_BUILD_PACKAGES} (setup.sh installs them)",
        )


def _first_error(log: Path) -> str:
    """The line of a failed build's output most likely to say why: the first error, else the last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    # A compiler's "error:", a shell's "not found", make's "***" (a file named error.c is no error).
    errors = [line for line in lines if re.search(r"\berror:|not found|\*\*\*", line, re.IGNORECASE)]
    if errors:
        return errors[0]
    return lines[-1] if lines else "make failed"


def _check_config(config: Path, fragment: str) -> None:
    """Fail unless every option ``fragment`` sets holds in the kernel's final ``config``.

    Kconfig drops silently an option whose dependencies are off, or that a
    new kernel renamed; the guest would then miss a driver.
    """
    final = set(config.read_text().splitlines())
    options = [line.strip() for line in fragment.splitlines() if line.strip() and not line.startswith("#")]
    missed = [option for option in options if option not in final]
    if missed:
        raise ImageBuildError(
            f"the kernel's configuration does not hold {', '.join(missed)}",
            hint=f"an option is renamed, or depends on one that is off, in {_KERNEL_SOURCE}: "
            "fix src/minivisor_appliance/kernel.config",
        )


def _initramfs(busybox: Path, programs: dict[str, bytes]) -> bytes:
    """The cpio initramfs: busybox, the guest init, and Debian's programs (``programs``: files by path).

    It is not compressed: under TCG the kernel takes longer to inflate it
    than SYSLINUX takes to read it whole through the BIOS.
    """
    cpio = _Cpio()
    for name in ("dev", "proc", "sys", "tmp", "root", "etc"):
        cpio.directory(name)
    # The kernel opens /dev/console for init before devtmpfs can be mounted.
    cpio.char_device("dev/console", 5, 1)
    cpio.file("init", _guest_init(), mode=0o755)
    _add_busybox(cpio, busybox)
    for name, data in sorted(programs.items()):
        cpio.file(name, data, mode=0o755)
    cpio.file("sbin/shutdown", _SHUTDOWN_SCRIPT, mode=0o755)
    return cpio.finish()


def _program_files(packages: _Packages, program: str) -> dict[str, bytes]:
    """``program`` of the package, its ELF interpreter and every shared library it loads, by path in the guest."""
    packages.add(packages.package)
    binary = packages.file(program)
    if binary is None:
        raise ImageBuildError(f"{packages.package} holds no /{program}")
    files = {program: binary}
    interpreter, needed = _elf_dependencies(binary, program)
    files[interpreter.lstrip("/")] = packages.require(interpreter.lstrip("/"))
    while needed:
        soname = needed.pop()
        path = f"{_LIBRARY_DIRS[0]}/{soname}"
        # libc names the interpreter too: the dynamic loader finds it loaded already.
        if path not in files and soname != os.path.basename(interpreter):
            files[path] = packages.library(soname)
            needed += _elf_dependencies(files[path], soname)[1]
    return files


class _Packages:
    """Debian packages unpacked into one tree, fetched on demand: ``package`` first, then, breadth
    first, the library packages (``lib*``) their Depends name, until a wanted file turns up."""

    def __init__(self, apt: _Apt, root: Path, tools: dict[str, str], package: str) -> None:
        self._apt, self._tools, self.root, self.package = apt, tools, root, package
        self._queue: list[str] = []
        self._seen: set[str] = set()

    def add(self, package: str) -> None:
        deb = self._apt.download(package)
        _extract_deb(deb, self.root, self._tools)
        depends = _run([self._tools["dpkg-deb"], "-f", str(deb), "Depends"], hint=f"delete {deb} and build again")
        for alternatives in depends.split(","):
            name = alternatives.split("|")[0].split("(")[0].split(":")[0].strip()
            if name.startswith("lib") and name not in self._seen:
                self._seen.add(name)
                self._queue.append(name)

    def file(self, path: str) -> bytes | None:
        """The bytes of ``path`` in the tree (its symbolic links followed inside the tree), or None."""
        for _ in range(16):
            where = self.root / path
            if where.is_symlink():
                target = os.readlink(where)
                path = target.lstrip("/") if target.startswith("/") else os.path.normpath(
                    os.path.join(os.path.dirname(path), target))
                if path.startswith(".."):
                    return None  # a link out of the tree: not a file of these packages
                continue
            return where.read_bytes() if where.is_file() else None
        return None

    def require(self, path: str) -> bytes:
        """The bytes of ``path``, adding packages from the queue until one holds it."""
        while (data := self.file(path)) is None:
            if not self._queue:
                raise ImageBuildError(f"no package {self.package} depends on holds /{path}",
                                      hint="check the package's dependencies: apt-cache depends " + self.package)
            self.add(self._queue.pop(0))
        return data

    def library(self, soname: str) -> bytes:
        """A shared library by its soname, from the library folders of the tree."""
        while True:
            for folder in _LIBRARY_DIRS:
                if (data := self.file(f"{folder}/{soname}")) is not None:
                    return data
            if not self._queue:
                raise ImageBuildError(f"no package {self.package} depends on holds {soname}",
                                      hint="check the package's dependencies: apt-cache depends " + self.package)
            self.add(self._queue.pop(0))


def _elf_dependencies(data: bytes, name: str) -> tuple[str, list[str]]:
    """An x86-64 ELF file's interpreter (PT_INTERP, "" if none) and NEEDED sonames (its dynamic section)."""
    if data[:5] != b"\x7fELF\x02" or data[5] != 1:
        raise ImageBuildError(f"{name} is not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    headers = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    loads = [(h[3], h[2], h[5]) for h in headers if h[0] == 1]  # PT_LOAD: vaddr, offset, filesz

    def offset_of(vaddr: int) -> int:
        return next(off + vaddr - start for start, off, size in loads if start <= vaddr < start + size)

    def string(at: int) -> str:
        return data[at:data.index(b"\0", at)].decode()

    interpreter = next((string(h[2]) for h in headers if h[0] == 3), "")  # PT_INTERP
    dynamic = next((h for h in headers if h[0] == 2), None)  # PT_DYNAMIC
    if dynamic is None:
        return interpreter, []
    entries = [struct.unpack_from("<qQ", data, dynamic[2] + i * 16) for i in range(dynamic[5] // 16)]
    strtab = offset_of(next(value for tag, value in entries if tag == 5))  # DT_STRTAB
    return interpreter, [string(strtab + value) for tag, value in entries if tag == 1]  # DT_NEEDED


def _add_busybox(cpio: _Cpio, busybox: Path) -> None:
    """Add busybox and a symlink for each of its applets."""
    if not busybox.is_file():
        raise ImageBuildError(f"{_BUSYBOX_PACKAGE} holds no /bin/busybox")
    cpio.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    # busybox-static runs on any x86-64 Linux host, so it can list itself.
    applets = _run([str(busybox), "--list-full"], hint=f"is {busybox.name} an x86-64 binary?")
    for applet in sorted(set(applets.split())):
        if applet != "bin/busybox":
            cpio.symlink(applet, "/bin/busybox")


class _Cpio:
    """An in-memory cpio archive in the "newc" format the kernel unpacks.

    Entries are owned by root with mtime 0, so equal inputs give equal bytes.
    Parent directories are added automatically (the kernel needs them first).
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._inode = 0
        self._dirs: set[str] = set()

    def directory(self, name: str) -> None:
        """Add a directory (and its parents) unless already present."""
        if name in self._dirs:
            return
        parent = os.path.dirname(name)
        if parent:
            self.directory(parent)
        self._dirs.add(name)
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, *, mode: int = 0o644) -> None:
        """Add a regular file."""
        self._parent(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link pointing at target."""
        self._parent(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        """Add a character device node."""
        self._parent(name)
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        """Close the archive and return its bytes."""
        self._entry("TRAILER!!!", 0)
        return b"".join(self._chunks)

    def _parent(self, name: str) -> None:
        parent = os.path.dirname(name)
        if parent:
            self.directory(parent)

    def _entry(
        self, name: str, mode: int, data: bytes = b"", *, nlink: int = 1, rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._inode += 1
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        self._write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._write(data)

    def _write(self, data: bytes) -> None:
        # Every header, name and body starts on a 4-byte boundary.
        self._chunks.append(data + b"\0" * (-len(data) % 4))


def _write_disk(image: Path, kernel: Path, initrd: Path, tools: dict[str, str]) -> None:
    """Make ``image`` a bootable superfloppy: FAT over the whole disk plus SYSLINUX.

    SeaBIOS boots the FAT boot sector SYSLINUX installs from every controller
    it supports, and Linux recognises the sector as FAT, not a partition table.
    """
    with image.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    hint = f"check free space and permissions in {image.parent}"
    _run([tools["mkfs.fat"], "-n", "MINIVISOR", "-i", "4d565347", str(image)], hint=hint)
    cfg = image.with_suffix(".cfg")
    cfg.write_text(_SYSLINUX_CFG)
    try:
        for source, name in ((kernel, "vmlinuz"), (initrd, "initrd"), (cfg, "syslinux.cfg")):
            _run([tools["mcopy"], "-i", str(image), str(source), f"::{name}"], hint=hint)
    finally:
        cfg.unlink()
    _run([tools["syslinux"], "--install", str(image)], hint=hint)


class _CommandFailed(Exception):
    """A host program exited non-zero; ``detail`` is its last line of output."""

    def __init__(self, argv: list[str], detail: str) -> None:
        super().__init__(f"{argv[0]} failed: {detail}")
        self.detail = detail


def _run_raw(argv: list[str], cwd: Path | None = None) -> str:
    """Run a host program and return its stdout; raise _CommandFailed on error."""
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise _CommandFailed(argv, lines[-1].strip() if lines else f"exit status {proc.returncode}")
    return proc.stdout


def _run(argv: list[str], *, hint: str) -> str:
    """Run a host program; a failure becomes an ImageBuildError with ``hint``."""
    try:
        return _run_raw(argv)
    except _CommandFailed as err:
        raise ImageBuildError(f"{Path(argv[0]).name} failed: {err.detail}", hint=hint) from None
