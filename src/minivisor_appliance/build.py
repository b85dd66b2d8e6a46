"""The test guest ("appliance"): a small BIOS-bootable raw disk built from Debian packages.

The image is a whole-disk FAT filesystem ("superfloppy") carrying SYSLINUX, the
Debian cloud kernel and an initramfs written here: busybox, the guest init
(``init`` beside this module) and the kernel modules for every disk controller and NIC that
minivisor can give a VM. The guest prints one inventory line and one ready
line on the serial console (see ``INVENTORY_PREFIX`` and ``READY_LINE``), then
serves a root shell there; the ACPI power button powers it off.

The cloud kernel (``linux-image-cloud-amd64``) is chosen for boot time under
TCG: it is LZ4-compressed (the generic kernel's XZ takes ~3 s to inflate
itself) and has fewer built-in drivers to initialise. It lacks a few drivers
for hardware minivisor emulates (``_EXTRA_DRIVERS``); those are compiled from
Debian's ``linux-source`` package against the cloud kernel's headers, once
per kernel version, and cached in ``modules/`` beside the images.

Nothing is mounted and no loop device is used: the filesystem is made with
``mkfs.fat`` and filled with mtools, so the build needs no privileges beyond
downloading packages (``apt-get download``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import itertools
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from minivisor.errors import ImageBuildError

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

_KERNEL_FLAVOUR = "cloud-amd64"
_KERNEL_METAPACKAGE = f"linux-image-{_KERNEL_FLAVOUR}"
_BUSYBOX_PACKAGE = "busybox-static"

# Drivers for every controller and NIC minivisor emulates, and for the ACPI
# power button. Dependencies are added from the modules' own metadata. Each
# comes from the kernel package or, where it lacks one, from _EXTRA_DRIVERS.
_MODULES = (
    "sym53c8xx",  # lsi53c895a = VMware lsilogic
    "mptsas",  # mptsas1068 = VMware lsisas1068
    "vmw_pvscsi",
    "ahci",
    "ata_piix",
    "nvme",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "sd_mod",
    "sr_mod",
    "vmxnet3",
    "e1000",
    "e1000e",
    "pcnet32",
    "button",
    "evdev",
)


@dataclass(frozen=True)
class _Driver:
    """Kernel modules the cloud kernel lacks, built from one folder of Debian's kernel source."""

    folder: str  # under the source tree
    sources: tuple[str, ...]  # what to extract from that folder; () is all of it
    kbuild: str  # the folder's Kbuild: objects to build, and the driver's own config options


# The drivers the cloud kernel does not build, for the hardware minivisor
# emulates that needs them. The -DCONFIG_ values are Debian's own choices for
# these drivers' options (from its generic kernel's config): the cloud
# kernel's headers cannot define options of drivers it does not build.
_EXTRA_DRIVERS = (
    _Driver(  # ich9-ahci
        "drivers/ata",
        ("ahci.c", "ahci.h", "libahci.c", "libata.h"),
        "obj-m += ahci.o libahci.o\nccflags-y += -DCONFIG_SATA_MOBILE_LPM_POLICY=3\n",
    ),
    _Driver(  # lsi53c895a
        "drivers/scsi/sym53c8xx_2",
        (),
        "obj-m += sym53c8xx.o\n"
        "sym53c8xx-y := sym_fw.o sym_glue.o sym_hipd.o sym_malloc.o sym_nvram.o\n"
        "ccflags-y += -DCONFIG_SCSI_SYM53C8XX_DMA_ADDRESSING_MODE=1 -DCONFIG_SCSI_SYM53C8XX_DEFAULT_TAGS=16"
        " -DCONFIG_SCSI_SYM53C8XX_MAX_TAGS=64 -DCONFIG_SCSI_SYM53C8XX_MMIO=1\n",
    ),
    _Driver(  # mptsas1068
        "drivers/message/fusion",
        (),
        "obj-m += mptbase.o mptscsih.o mptsas.o\nccflags-y += -DCONFIG_FUSION_MAX_SGE=128\n",
    ),
    _Driver(  # e1000 (82540EM)
        "drivers/net/ethernet/intel/e1000",
        (),
        "obj-m += e1000.o\ne1000-y := e1000_main.o e1000_hw.o e1000_ethtool.o e1000_param.o\n",
    ),
    _Driver(  # e1000e (82574L)
        "drivers/net/ethernet/intel/e1000e",
        (),
        "obj-m += e1000e.o\n"
        "e1000e-y := 82571.o ich8lan.o 80003es2lan.o mac.o manage.o nvm.o phy.o param.o ethtool.o"
        " netdev.o ptp.o\n"
        "ccflags-y += -DCONFIG_E1000E_HWTS=1\n",
    ),
    _Driver("drivers/net/ethernet/amd", ("pcnet32.c",), "obj-m += pcnet32.o\n"),  # pcnet
    _Driver("drivers/net", ("mii.c",), "obj-m += mii.o\n"),  # for pcnet32
)

# Modules loaded along with any driver that needs a module named here,
# because the devices that driver reveals need them: the disks behind a SCSI
# host (sd_mod), the power button's input device (evdev). Loading them at
# once, not after those devices appear, saves the guest init a round of
# driver loading (~70 ms under TCG).
_COMPANIONS = {"scsi_mod": ("sd_mod",), "button": ("evdev",)}

# Every option below is there for boot time under TCG (each was measured),
# except panic=-1, which turns a panic into a reset that QEMU's -no-reboot
# turns into exit, and ipv6.disable=1, which also keeps the guest silent on
# the network when its NICs come up (no router solicitations, no DAD).
_KERNEL_CMDLINE = " ".join(
    (
        "console=ttyS0,115200",
        # Serial output is slow under TCG, and kernel messages must not land
        # inside the guest's console lines: only emergencies get through.
        "quiet loglevel=1",
        "panic=-1",
        "ipv6.disable=1",
        # Skip the crypto self-tests and initcalls that cost 20-180 ms each
        # for features the guest never uses: a KDF self-test, encrypted keys,
        # kprobe and block tracing, two tracing set-ups that look up a symbol
        # for each of the kernel's ~38,000 traceable functions, the BPF
        # functions of TCP and others, whose registration parses the kernel's
        # BTF (modules' BTF is hidden for the same reason: _without_btf), and
        # the PS/2 keyboard (the console is serial). Without cubic, TCP uses
        # reno; the guest sends no traffic anyway.
        "cryptomgr.notests",
        "initcall_blacklist=crypto_kdf108_init,init_encrypted,init_kprobe_trace,init_blk_tracer,"
        "trace_eval_init,ftrace_check_for_weak_functions,cubictcp_register,tcp_congestion_default,"
        "bpf_tcp_ca_kfunc_init,bpf_prog_test_run_init,bpf_key_sig_kfuncs_init,bpf_rstat_kfunc_init,"
        "kfunc_init,i8042_init",
        # Skip W+X page-table checks, mitigation patching, probing unused
        # UARTs and the delay-loop calibration of each CPU (udelay uses the
        # TSC; lpj is only its fallback).
        "rodata=off mitigations=off 8250.nr_uarts=1 lpj=10000000",
        # With one CPU the kernel would rewrite each of its lock prefixes into
        # a no-op at boot (~0.2 s under TCG); a lock prefix costs TCG nothing.
        "noreplace-smp",
        # Skip asking the BIOS about each disk (EDD, ~50 ms; the boot code
        # reads edd=off, the kernel then calls it unknown), and the local
        # APIC timer, whose calibration spins for 100 ms: the HPET ticks.
        "edd=off noapictimer",
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
# gcc-12 is the compiler Debian 12 builds its kernels with, as the kernel
# headers require.
_HOST_TOOLS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "syslinux": "syslinux",
    "make": "make",
    "gcc-12": "gcc-12",
}

Progress = Callable[[str], None]


def build_appliance(cache_dir: Path, *, force: bool = False, progress: Progress | None = None) -> Path:
    """Build the appliance image, or reuse the cached one; return its path.

    The image lives in ``cache_dir/images/`` under a name carrying a hash of
    the build inputs, so changing them (e.g. the guest init) builds a new one.
    Downloaded packages are kept in ``cache_dir/debs/``, the drivers built
    for the kernel in ``cache_dir/modules/``. The image is written
    to a temporary file and renamed into place, so a killed build never
    leaves a partial image under the final name. ``force`` rebuilds even when
    the image exists. ``progress`` receives one short line per build step.

    Raises ImageBuildError, with a hint how to fix it, when any step fails.
    """
    say = progress or (lambda _line: None)
    cache_dir = Path(cache_dir)
    target = cache_dir / "images" / f"appliance-{_inputs_digest()[:16]}.img"
    if target.exists() and not force:
        return target
    tools = _host_tools()
    try:
        _build(cache_dir, target, tools, say)
    except OSError as err:
        raise ImageBuildError(
            f"cannot build the appliance image: {err}",
            hint=f"check free space and permissions in {cache_dir}",
        ) from err
    say(f"appliance image ready: {target}")
    return target


def _build(cache_dir: Path, target: Path, tools: dict[str, str], say: Progress) -> None:
    """Build the image into a temporary file beside ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # The kernel package unpacks to ~100 MB and its source to more: work
    # beside the cache rather than in a /tmp that may be a small tmpfs.
    with tempfile.TemporaryDirectory(prefix=".build-", dir=cache_dir) as work:
        kernel, initrd = _build_boot_files(cache_dir, Path(work), tools, say)
        say("writing the disk image")
        fd, partial = tempfile.mkstemp(prefix=".appliance-", suffix=".partial", dir=target.parent)
        os.close(fd)
        try:
            _write_disk(Path(partial), kernel, initrd, tools)
            os.chmod(partial, 0o644)  # mkstemp made it private
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)


def _inputs_digest() -> str:
    """A hash of the build inputs that live in this package.

    That is this module (the recipe: packages, modules, the drivers built,
    kernel command line, disk layout) and the guest init. The Debian packages
    are pinned by the copies kept in ``debs/``.
    """
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(_guest_init())
    return h.hexdigest()


def _guest_init() -> bytes:
    """The guest's init script, shipped as package data."""
    return importlib.resources.files("minivisor_appliance").joinpath("init").read_bytes()


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


def _build_boot_files(cache_dir: Path, work: Path, tools: dict[str, str], say: Progress) -> tuple[Path, Path]:
    """Fetch the packages, build the missing drivers; return the kernel and an initramfs made in ``work``."""
    apt = _Apt(tools, cache_dir / "debs", say)
    kernel_package, version = apt.kernel_package()
    kernel_deb = apt.download(kernel_package, version)
    busybox_deb = apt.download(_BUSYBOX_PACKAGE)
    say(f"extracting {kernel_deb.name}")
    root = work / "root"
    for deb in (kernel_deb, busybox_deb):
        _extract_deb(deb, root, tools)
    release, vmlinuz = _kernel_release(root)
    built = _built_drivers(cache_dir / "modules", _KernelBuild(apt, release, version, work, tools, say))
    say(f"writing the initramfs for kernel {release}")
    initrd = work / "initrd"
    initrd.write_bytes(_initramfs(root, release, built))
    return vmlinuz, initrd


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

    def kernel_package(self) -> tuple[str, str]:
        """The versioned kernel package the metapackage currently depends on, and its version."""
        self._say(f"resolving {_KERNEL_METAPACKAGE}")
        depends = self._run_apt([self._tools["apt-cache"], "depends", _KERNEL_METAPACKAGE])
        package = re.search(r"Depends:\s*(linux-image-\d\S*)", depends)
        if package is None:
            raise ImageBuildError(
                f"apt-cache lists no versioned kernel package for {_KERNEL_METAPACKAGE}",
                hint="check that the Debian main archive is in the apt sources",
            )
        # The candidate version: the headers and source must be of the same.
        show = self._run_apt([self._tools["apt-cache"], "show", "--no-all-versions", package.group(1)])
        version = re.search(r"^Version:\s*(\S+)", show, re.MULTILINE)
        if version is None:
            raise ImageBuildError(f"apt-cache shows no version of {package.group(1)}", hint=_APT_SOURCES_HINT)
        return package.group(1), version.group(1)

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


def _kernel_release(root: Path) -> tuple[str, Path]:
    """The release (``uname -r``) of the kernel extracted under root, and its image."""
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise ImageBuildError("the kernel package holds no single /boot/vmlinuz-*")
    release = images[0].name.removeprefix("vmlinuz-")
    return release, images[0]


@dataclass(frozen=True)
class _KernelBuild:
    """What building drivers for the kernel needs: its release, its packages, and where to work."""

    apt: _Apt
    release: str  # as ``uname -r`` says, e.g. 6.1.0-57-cloud-amd64
    version: str  # the Debian version of the kernel's packages, e.g. 6.1.192-3
    work: Path
    tools: dict[str, str]
    say: Progress

    @property
    def series(self) -> str:
        """The kernel series naming Debian's kbuild and source packages, e.g. 6.1."""
        return ".".join(self.release.split(".")[:2])


def _built_drivers(cache: Path, build: _KernelBuild) -> Path:
    """The folder of _EXTRA_DRIVERS' modules for the kernel, built unless already in ``cache``.

    The folder's name carries a hash of the kernel version and the driver
    recipe, so a new kernel or a changed recipe builds anew. The modules are
    copied into a temporary folder that is renamed into place, so a killed
    build never leaves a partial folder under the final name.
    """
    recipe = repr((build.release, build.version, _EXTRA_DRIVERS)).encode()
    target = cache / f"{build.release}-{hashlib.sha256(recipe).hexdigest()[:16]}"
    if target.is_dir():
        return target
    headers = _kernel_headers(build)
    tree = _driver_sources(build)
    build.say(f"compiling {len(_EXTRA_DRIVERS)} drivers for kernel {build.release}")
    cache.mkdir(parents=True, exist_ok=True)
    _compile(headers, tree, build.tools, log=cache / "build.log")
    partial = Path(tempfile.mkdtemp(prefix=".modules-", dir=cache))
    try:
        os.chmod(partial, 0o755)  # mkdtemp made it private
        for module in tree.rglob("*.ko"):
            shutil.copyfile(module, partial / module.name)
        os.replace(partial, target)
    except OSError:
        if not target.is_dir():  # else a concurrent build got there first
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _kernel_headers(build: _KernelBuild) -> Path:
    """Unpack the kernel's headers and Debian's kbuild tools; return the folder to build against."""
    abi = build.release.removesuffix(f"-{_KERNEL_FLAVOUR}")
    root = build.work / "kbuild"
    headers = f"linux-headers-{build.release}"
    for package in (headers, f"linux-headers-{abi}-common", f"linux-kbuild-{build.series}"):
        _extract_deb(build.apt.download(package, build.version), root, build.tools)
    folder = root / "usr" / "src" / headers
    # Its Makefile includes the common headers' one by absolute path, in /usr/src.
    makefile = folder / "Makefile"
    makefile.write_text(makefile.read_text().replace("/usr/src/", f"{root}/usr/src/"))
    return folder


def _driver_sources(build: _KernelBuild) -> Path:
    """Unpack _EXTRA_DRIVERS' sources from Debian's kernel source and add their Kbuild files.

    Returns the tree, laid out as in the kernel source, to build as external modules.
    """
    package = f"linux-source-{build.series}"
    _extract_deb(build.apt.download(package, build.version), build.work / "source", build.tools)
    tarball = build.work / "source" / "usr" / "src" / f"{package}.tar.xz"
    build.say(f"extracting {len(_EXTRA_DRIVERS)} drivers from {tarball.name}")
    tree = build.work / "drivers"
    try:
        # Read as a stream: seeking back in an xz file means inflating it again.
        with tarfile.open(tarball, "r|xz") as archive:
            for member in archive:
                relative = member.name.removeprefix(f"{package}/")
                if member.isfile() and _is_driver_source(relative):
                    (tree / relative).parent.mkdir(parents=True, exist_ok=True)
                    (tree / relative).write_bytes(archive.extractfile(member).read())
    except (tarfile.TarError, EOFError, lzma.LZMAError) as err:
        raise ImageBuildError(
            f"cannot read {tarball.name}: {err}", hint=f"delete {package}_*.deb in the cache and build again"
        ) from None
    for driver in _EXTRA_DRIVERS:
        (tree / driver.folder / "Kbuild").write_text(driver.kbuild)
    (tree / "Kbuild").write_text(f"obj-m += {' '.join(f'{driver.folder}/' for driver in _EXTRA_DRIVERS)}\n")
    return tree


def _is_driver_source(path: str) -> bool:
    """Is ``path`` (in the kernel source tree) a file one of _EXTRA_DRIVERS needs?"""
    if ".." in path.split("/"):
        return False
    folder, _, name = path.rpartition("/")
    return any(
        (folder == driver.folder and name in driver.sources)
        or (not driver.sources and f"{folder}/".startswith(f"{driver.folder}/"))
        for driver in _EXTRA_DRIVERS
    )


def _compile(headers: Path, tree: Path, tools: dict[str, str], log: Path) -> None:
    """Build the external modules in ``tree`` against ``headers``; on failure keep the output in ``log``."""
    # -g0: no debug information, so the modules are as small as Debian's stripped ones.
    jobs = f"-j{os.cpu_count() or 1}"
    argv = [tools["make"], "-C", str(headers), f"M={tree}", jobs, "KCFLAGS=-g0", "modules"]
    proc = subprocess.run(argv, env=dict(os.environ, LC_ALL="C"), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log.write_text(proc.stdout + proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        raise ImageBuildError(
            f"compiling the appliance's drivers failed: {(errors or ['make failed'])[0].strip()}",
            hint=f"see {log}; the build needs gcc-12, make and libelf1 (setup.sh installs them)",
        )


def _initramfs(root: Path, release: str, built: Path) -> bytes:
    """The cpio initramfs: busybox, the init and the modules (the package's and those in ``built``).

    It is not compressed: under TCG the kernel takes ~0.3 s to inflate even a
    2 MB gzip initramfs, far longer than SYSLINUX takes to read the 4 MB more
    through the BIOS.
    """
    cpio = _Cpio()
    for name in ("dev", "proc", "sys", "tmp", "root", "etc"):
        cpio.directory(name)
    # The kernel opens /dev/console for init before devtmpfs can be mounted.
    cpio.char_device("dev/console", 5, 1)
    cpio.file("init", _guest_init(), mode=0o755)
    _add_busybox(cpio, root / "bin" / "busybox")
    _add_modules(cpio, root / "lib" / "modules" / release, built)
    return cpio.finish()


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


# Module files as Debian may ship them, and how to read each.
_MODULE_SUFFIXES: dict[str, Callable[[bytes], bytes]] = {
    ".ko": lambda data: data,
    ".ko.xz": lzma.decompress,
    ".ko.gz": gzip.decompress,
}


def _add_modules(cpio: _Cpio, moddir: Path, built: Path) -> None:
    """Add the wanted modules, their dependencies, and the indexes to load them.

    ``moddir`` is the kernel package's module folder, ``built`` a folder of
    modules built for it. Debian's kernel package ships no modules.dep (its
    postinst runs depmod), so dependencies and aliases come from each
    module's .modinfo section.
    """
    available = {**_module_files(moddir / "kernel"), **_module_files(built)}
    builtin = _builtin_modules(moddir)
    modules = _with_dependencies(_MODULES, available, builtin)
    base = f"lib/modules/{moddir.name}"
    dep_lines, aliases = [], []
    for name, info in modules.items():
        path = f"kernel/{name}.ko"
        cpio.file(f"{base}/{path}", info.data)
        # busybox modprobe loads a line's dependencies right to left.
        deps = " ".join(f"kernel/{dep}.ko" for dep in _load_order(name, modules)[-2::-1])
        dep_lines.append(f"{path}: {deps}".rstrip())
        aliases.extend((alias, name) for alias in info.aliases)
    # The indexes serve modprobe in the guest's shell; the init uses drivers.sh.
    cpio.file(f"{base}/modules.dep", _lines(dep_lines))
    cpio.file(f"{base}/modules.alias", _lines(f"alias {alias} {name}" for alias, name in aliases))
    cpio.file("etc/drivers.sh", _modules_for_function(modules))


def _lines(lines: Iterable[str]) -> bytes:
    """Text lines as the bytes of a file."""
    return "".join(f"{line}\n" for line in lines).encode()


def _modules_for_function(modules: dict[str, _Module]) -> bytes:
    """Shell code defining ``modules_for MODALIAS``, which sets ``$mods`` to the modules to load for it.

    That is, in load order, each driver whose aliases match MODALIAS, the
    modules it depends on and its companions (_COMPANIONS). The guest init
    loads them with insmod: under TCG, modprobe's reading of its indexes
    and a fork for each device would cost it ~150 ms. Alias patterns are
    shell globs already, so they become case patterns; only characters with
    a meaning to the shell parser need escaping. They are grouped by bus (the
    alias's first field), as matching a device against all ~700 patterns
    costs ~4 ms under TCG. The function sets a variable, as $(...) would fork.
    """
    buses: dict[str, list[str]] = {}
    for name, module in modules.items():
        chain = " ".join(_with_companions(name, modules))
        # An alias with no bus (block-major-8-*) names no device: only the kernel asks for it.
        device_aliases = sorted(alias for alias in set(module.aliases) if ":" in alias)
        for bus, patterns in itertools.groupby(device_aliases, key=lambda p: p.partition(":")[0]):
            alternatives = " | ".join(_shell_pattern(pattern) for pattern in patterns)
            case = f'        case $1 in {alternatives}) mods="$mods {chain}" ;; esac'
            buses.setdefault(bus, []).append(case)
    lines = ["# Generated by minivisor_appliance.build from the modules' aliases and dependencies."]
    lines += ["modules_for() {", "    mods=", "    case $1 in"]
    for bus, cases in buses.items():
        lines += [f"    {_shell_pattern(bus)}:*)", *cases, "        ;;"]
    lines += ["    esac", "}"]
    return _lines(lines)


def _shell_pattern(glob: str) -> str:
    """A glob as a shell case pattern: characters the shell parser would act on are escaped."""
    return re.sub(r"([^A-Za-z0-9_*?\[\]!:.,+=/-])", r"\\\1", glob)


def _with_companions(name: str, modules: dict[str, _Module]) -> list[str]:
    """``name``, what it depends on, and the companions of all those, in load order.

    A companion comes right after the module that calls for it, so that it
    is there before the driver finds devices (sd_mod before the SCSI scan).
    """
    order: list[str] = []
    for module in _load_order(name, modules):
        companions = [m for companion in _COMPANIONS.get(module, ()) for m in _load_order(companion, modules)]
        for each in (module, *companions):
            if each not in order:
                order.append(each)
    return order


class _Module:
    """A kernel module's code and the metadata the build needs from it."""

    def __init__(self, data: bytes) -> None:
        self.data = _without_btf(_without_signature(data))
        info = _modinfo(self.data)
        self.depends = [
            _module_name(dep) for value in info.get("depends", []) for dep in value.split(",") if dep
        ]
        self.aliases = info.get("alias", [])


_SIGNATURE_MAGIC = b"~Module signature appended~\n"
_SIGNATURE_INFO = struct.Struct(">BBBBBxxxI")  # struct module_signature; the last field is its length


def _without_signature(module: bytes) -> bytes:
    """The module without the signature Debian appends to it.

    The kernel loads an unsigned module all the same (it only notes a taint),
    while checking a signature costs ~15 ms a module under TCG.
    """
    if not module.endswith(_SIGNATURE_MAGIC):
        return module
    info_end = len(module) - len(_SIGNATURE_MAGIC)
    info_start = info_end - _SIGNATURE_INFO.size
    *_, signature_length = _SIGNATURE_INFO.unpack_from(module, info_start)
    return module[: info_start - signature_length]


def _module_name(name: str) -> str:
    """The kernel's canonical module name (it treats - and _ alike)."""
    return name.replace("-", "_")


def _module_files(folder: Path) -> dict[str, Path]:
    """Every module file under ``folder``, by canonical module name."""
    files = {}
    for path in folder.rglob("*.ko*"):
        for suffix in _MODULE_SUFFIXES:
            if path.name.endswith(suffix):
                files[_module_name(path.name.removesuffix(suffix))] = path
    return files


def _builtin_modules(moddir: Path) -> set[str]:
    """Names of the modules compiled into the kernel (modules.builtin)."""
    builtin = moddir / "modules.builtin"
    if not builtin.exists():
        return set()
    return {_module_name(Path(entry).name.removesuffix(".ko")) for entry in builtin.read_text().split()}


def _with_dependencies(
    wanted: Iterable[str], files: dict[str, Path], builtin: set[str]
) -> dict[str, _Module]:
    """The wanted modules and everything they depend on, skipping built-ins."""
    modules: dict[str, _Module] = {}
    pending = [_module_name(n) for n in wanted]
    while pending:
        name = pending.pop()
        if name in modules or name in builtin:
            continue
        if name not in files:
            raise ImageBuildError(
                f"neither the kernel package nor the drivers built for it hold the module {name}",
                hint=f"this minivisor's appliance recipe does not fit the current {_KERNEL_METAPACKAGE}",
            )
        path = files[name]
        suffix = next(s for s in _MODULE_SUFFIXES if path.name.endswith(s))
        modules[name] = _Module(_MODULE_SUFFIXES[suffix](path.read_bytes()))
        pending.extend(modules[name].depends)
    return modules


def _load_order(name: str, modules: dict[str, _Module]) -> list[str]:
    """``name`` and its (in-image) dependencies, each after all it depends on."""
    order: list[str] = []

    def visit(module: str) -> None:
        if module in order or module not in modules:
            return
        for dep in modules[module].depends:
            visit(dep)
        order.append(module)

    visit(name)
    return order


@dataclass(frozen=True)
class _Section:
    """An ELF section: its name, where its header is, and where its contents are."""

    name: bytes
    header: int  # file offset of the section header; sh_name is its first field
    offset: int
    size: int


def _sections(elf: bytes) -> list[_Section]:
    """The sections of a 64-bit little-endian ELF file (a kernel module)."""
    if elf[:5] != b"\x7fELF\x02":
        raise ImageBuildError(
            "a kernel module in the kernel package is not a 64-bit ELF file",
            hint="delete the cached packages (debs/ in the cache directory) and build again",
        )
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [shoff + index * shentsize for index in range(shnum)]
    fields = [struct.unpack_from("<IIQQQQ", elf, header) for header in headers]
    names = fields[shstrndx][4]  # the file offset of the section-name strings
    return [
        _Section(elf[names + name : elf.index(b"\0", names + name)], header, offset, size)
        for header, (name, _type, _flags, _addr, offset, size) in zip(headers, fields)
    ]


def _modinfo(elf: bytes) -> dict[str, list[str]]:
    """The key=value strings of a module's .modinfo ELF section, grouped by key."""
    info: dict[str, list[str]] = {}
    for section in _sections(elf):
        if section.name == b".modinfo":
            strings = elf[section.offset : section.offset + section.size].decode(errors="replace")
            for entry in strings.split("\0"):
                key, sep, value = entry.partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
    return info


def _without_btf(module: bytes) -> bytes:
    """The module with its BTF type information (section .BTF) hidden from the kernel.

    Loading a module's BTF makes the kernel parse its own first (~5 MB, ~0.1 s
    under TCG), and nothing in the guest uses BTF (it serves BPF). The section
    header's name becomes the empty string at offset 0 of the name table, so
    the kernel, which finds the section by name, no longer sees it.
    """
    hidden = bytearray(module)
    for section in _sections(module):
        if section.name == b".BTF":
            struct.pack_into("<I", hidden, section.header, 0)
    return bytes(hidden)


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
