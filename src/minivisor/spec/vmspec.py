"""The typed view of a specfile: the virtual hardware a `.vmx` asks for.

``VmSpec.from_vmx(doc)`` turns a parsed :class:`~minivisor.spec.vmx.VmxDocument`
into frozen records and reports semantic problems (unknown device types,
impossible sizes) as :class:`~minivisor.errors.SpecError` naming the line.
It does no I/O: checks against the host and the datastore happen in
:mod:`minivisor.vmm.plan`.

Every count and range a specfile states is checked against its bound before
anything is built from it, and a value echoed in an error is cut to a short
excerpt: a specfile is input from outside.
"""

from __future__ import annotations

import re

from ..errors import SpecError, StateError
from ..records import Record
from ..text import clip, excerpt, is_number
from .devices import CONTROLLER_COUNT, NIC_MODELS, SCSI_MODELS, SOUND_MODELS, UNIT_COUNT, USB_MODELS
from .fidelity import KeyNote, Verdict, foreign_path
from .pci import decode_slot
from .vmx import VmxDocument

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~2.5 ms of a direct snapshot or power-on)
if TYPE_CHECKING:
    from typing import Literal

__all__ = [
    "Bus",
    "DiskController",
    "Disk",
    "Nic",
    "SerialPort",
    "Floppy",
    "Display",
    "UsbController",
    "Sound",
    "Sched",
    "VmSpec",
    "parse_bool",
    "normalize_mac",
    "format_cpu_list",
]

if TYPE_CHECKING:
    Bus = Literal["scsi", "sata", "ide", "nvme"]
else:  # a bus is a str at run time: what typing.get_type_hints gives the client's rebuild (client._init_fields)
    Bus = str
BUSES: tuple[Bus, ...] = ("scsi", "sata", "nvme", "ide")

# Every numbered device a VM can have: scsi0-scsi3 ... ethernet0-ethernet9, serial0-serial3, floppy0-floppy1.
DEVICE_COUNT = {**CONTROLLER_COUNT, "ethernet": 10, "serial": 4, "floppy": 2}
MEMORY_MIB = (4, 16 * 1024 * 1024)  # memSize: VMware's smallest and largest, in MiB
VCPUS = (1, 255)  # numvcpus
MAX_HOST_CPUS = 8192  # Linux's largest NR_CPUS: no host CPU has a higher number
MAX_NETWORK_NAME = 128  # characters of ethernetN.networkName
MAX_READY_LINE = 200  # characters of minivisor.readyLine (a line the guest prints)

CONNECTION_TYPES = {"bridged", "nat", "hostonly", "custom", "pvn", "none"}
HARD_DISK_TYPES = {"disk", "scsi-harddisk", "ata-harddisk", "plaindisk"}
CDROM_TYPES = {"cdrom-image", "cdrom-raw", "atapi-cdrom"}
HOST_CDROM_TYPES = {"cdrom-raw", "atapi-cdrom"}  # the host's own drive, never passed through
# Devices VMware builds when their key is TRUE that minivisor does not (yet): key -> what the guest misses.
DEVICES_NOT_BUILT = {"vtpm.present": "TPM", "parallel0.present": "parallel port", "smc.present": "Apple SMC"}
# What bios.bootOrder may name, and the order VMware's BIOS tries them in when it names none.
BOOT_KINDS = ("hdd", "cdrom", "floppy")  # bios.bootOrder's words, in the order tried when it names none
# Values VMware uses for "no backing": an empty drive.
EMPTY_BACKINGS = {"", "auto detect", "emptybackingstring", "cd/dvd drive 0", "floppy 0"}

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_DEVICE_KEY = re.compile(r"^(scsi|sata|nvme|ide)(\d+):(\d+)\.", re.IGNORECASE)
_PCI_BRIDGE_KEY = re.compile(r"^pciBridge[0-7]\.(present|virtualDev|functions|pciSlotNumber)$", re.IGNORECASE)
_PRESENT_KEY = re.compile(r"^(scsi|sata|nvme|ide|ethernet|serial|floppy)(\d+)\.present$", re.IGNORECASE)
_CPU_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?\Z")
_SHARES = re.compile(r"[0-9]{1,7}\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_HOST = re.compile(r"[A-Za-z0-9.\-]{0,253}\Z|\[[0-9A-Fa-f:]{2,39}\]\Z")


def quoted(name: str) -> str:
    """A file or host name from the specfile in a note: in quotes, its backslashes as written (a Windows
    path stays readable), cut short; every output path escapes control characters."""
    return f'"{clip(name, 60)}"'


def parse_bool(value: str | None, default: bool = False) -> bool:
    """VMware booleans: TRUE/FALSE in any case, or 1/0."""
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"true", "1", "yes", "on"}


def format_cpu_list(cpus: set[int] | tuple[int, ...], limit: int = 60) -> str:
    """CPU numbers as a short list of ranges (``0-3,8``), as sched.cpu.affinity writes them."""
    ranges: list[str] = []
    numbers = sorted(cpus)
    start = 0
    for i, cpu in enumerate(numbers):
        if i + 1 == len(numbers) or numbers[i + 1] != cpu + 1:
            ranges.append(f"{numbers[start]}-{cpu}" if cpu != numbers[start] else str(cpu))
            start = i + 1
    return clip(",".join(ranges), limit) or "none"


def normalize_mac(value: str) -> str | None:
    """A MAC in lower-case colon form, or None if it is not one."""
    mac = value.strip().lower().replace("-", ":")
    return mac if _MAC.match(mac) else None


class DiskController(Record, frozen=True):
    """A storage controller: ``scsi0``, ``sata1``, ``nvme0``, ``ide0``."""

    bus: Bus
    index: int
    model: str  # lsilogic, lsisas1068, pvscsi, buslogic, virtio-scsi, ahci, nvme, piix4
    pci_slot: int | None = None  # pciSlotNumber, when it names a place the VM can have (spec.pci)

    @property
    def name(self) -> str:
        return f"{self.bus}{self.index}"


class Disk(Record, frozen=True):
    """A device on a controller: a hard disk or a CD-ROM."""

    bus: Bus
    controller_index: int
    unit: int
    kind: Literal["disk", "cdrom"]
    file_name: str | None  # as written in the specfile; None means an empty drive
    read_only: bool = False
    mode: str = "persistent"

    @property
    def node(self) -> str:
        """VMware's device name, e.g. ``scsi0:0``."""
        return f"{self.bus}{self.controller_index}:{self.unit}"

    @property
    def controller(self) -> str:
        return f"{self.bus}{self.controller_index}"


class Nic(Record, frozen=True):
    """An ``ethernetN`` adapter."""

    index: int
    model: str
    mac: str | None  # None: not set in the specfile yet
    connection_type: str
    network_name: str | None
    start_connected: bool = True
    vnet: str | None = None  # custom: ``VMnet5`` (or ``/dev/vmnet5``), the host network VMware names
    pci_slot: int | None = None  # pciSlotNumber, when it names a place the VM can have (spec.pci)

    @property
    def name(self) -> str:
        return f"ethernet{self.index}"

    @property
    def network(self) -> str:
        """The network the NIC asks for, as a user would name it."""
        return self.network_name or self.connection_type


class SerialPort(Record, frozen=True):
    """A ``serialN`` port: to a file, a UNIX socket (``pipe``), a TCP listener on loopback (``network``), or
    to nothing (``disconnected``: the guest still sees the port)."""

    index: int
    file_type: Literal["file", "pipe", "network", "disconnected"]
    file_name: str | None  # a pipe without one is a socket in the VM's runtime folder
    pipe_server: bool = True
    tcp_port: int | None = None  # network: the port it listens on (127.0.0.1 only)
    telnet: bool = False


class Floppy(Record, frozen=True):
    """A ``floppyN`` drive backed by an image file."""

    index: int
    file_name: str | None


class Display(Record, frozen=True):
    """The virtual graphics adapter (VMware SVGA II)."""

    present: bool = True
    vram_bytes: int = 4 * 1024 * 1024


class UsbController(Record, frozen=True):
    """A USB controller, named by the key that turns it on: ``usb`` (UHCI), ``ehci``, ``usb_xhci``."""

    name: Literal["usb", "ehci", "usb_xhci"]
    pci_slot: int | None = None


class Sound(Record, frozen=True):
    """The sound card (``sound.virtualDev``: hdaudio, es1371, sb16); it plays to nothing on the host."""

    model: str
    pci_slot: int | None = None


# VMware's share levels: CPU shares per vCPU, memory shares per MiB of memSize.
CPU_SHARE_LEVELS = {"low": 500, "normal": 1000, "high": 2000}
MEM_SHARE_LEVELS = {"low": 5, "normal": 10, "high": 20}


class Sched(Record, frozen=True):
    """Resource controls (``sched.*``): CPU affinity, CPU and memory shares, memory reservation."""

    cpu_affinity: tuple[int, ...] | None = None  # host CPUs the VMM may run on; None: all
    cpu_shares: int | None = None  # total shares (levels scaled by numvcpus); None: not set (normal)
    mem_shares: int | None = None  # total shares (levels scaled by memSize); None: not set (normal)
    mem_min_mib: int = 0  # memory reserved for the VM (sched.mem.min)


class VmSpec(Record, frozen=True):
    """The virtual hardware a specfile describes."""

    display_name: str
    guest_os: str
    memory_mib: int
    num_cpus: int
    cores_per_socket: int
    firmware: Literal["bios", "efi"]
    nvram: str | None
    uuid_bios: str | None
    controllers: tuple[DiskController, ...]
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    serial_ports: tuple[SerialPort, ...]
    floppies: tuple[Floppy, ...]
    display: Display
    boot_order: tuple[str, ...]  # device nodes from bios.hddOrder, first boots first
    ready_line: str
    sched: Sched = Sched()
    usb: tuple[UsbController, ...] = ()  # in VMware's order: UHCI, EHCI, xHCI; the tablet on the last
    sound: Sound | None = None
    secure_boot: bool = False  # uefi.secureBoot.enabled (with firmware = "efi")
    boot_classes: tuple[str, ...] = BOOT_KINDS  # bios.bootOrder: hdd, cdrom, floppy, in the order tried
    unused_keys: tuple[str, ...] = ()
    unread_device_keys: tuple[str, ...] = ()  # settings of devices it has that nothing reads (pciSlotNumber...)
    warnings: tuple[str, ...] = ()
    notes: tuple[KeyNote, ...] = ()  # what became of each device or key that is not simply virtualized

    @property
    def sockets(self) -> int:
        return self.num_cpus // self.cores_per_socket

    @property
    def hard_disks_in_boot_order(self) -> list[Disk]:
        """The hard disks, ``bios.hddOrder``'s first, the others in controller order (scsi, sata, nvme, ide)."""
        hard_disks = [d for d in self.disks if d.kind == "disk" and d.file_name]
        ranks = {node: rank for rank, node in enumerate(self.boot_order)}
        return sorted(hard_disks, key=lambda d: ranks.get(d.node, len(ranks)))  # stable: the rest keep their order

    @property
    def boot_disk(self) -> Disk | None:
        """The hard disk the firmware tries first."""
        disks = self.hard_disks_in_boot_order
        return disks[0] if disks else None

    def boot_indexes(self) -> dict[str, int]:
        """Each bootable device (a disk node, ``floppyN``) and its place in the firmware's boot order (QEMU's
        bootindex): ``bios.bootOrder``'s kinds in turn; a device that has nothing to boot is skipped."""
        by_kind = {"hdd": [d.node for d in self.hard_disks_in_boot_order],
                   "cdrom": [d.node for d in self.disks if d.kind == "cdrom"],
                   "floppy": [f"floppy{f.index}" for f in self.floppies]}
        order = [device for kind in self.boot_classes for device in by_kind[kind]]
        return {device: index for index, device in enumerate(order)}

    @classmethod
    def from_vmx(cls, doc: VmxDocument) -> VmSpec:
        """Read the hardware from a parsed specfile; raise SpecError on the first problem."""
        doc.raise_for_errors()
        return _SpecReader(doc).read()


DEFAULT_READY_LINE = "minivisor-guest: ready"


class _SpecReader:
    """Reads one document, remembering which keys it understood."""

    def __init__(self, doc: VmxDocument) -> None:
        self.doc = doc
        self.used: set[str] = set()
        self.used_prefixes: set[str] = set()
        self.warnings: list[str] = []
        self.notes: dict[str, KeyNote] = {}
        self.pci_slots: dict[int, str] = {}  # slot numbers taken, by the device that took each

    # -- key access ----------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        self.used.add(key.lower())
        return self.doc.get(key, default)

    def use_prefix(self, prefix: str) -> None:
        """Mark every key under ``prefix`` (a device: ``scsi0:1.``, ``ethernet0.``) as handled, even if ignored."""
        # Kept as a set looked up once per key in is_used: marking each key here would cost
        # keys x devices, which a specfile with thousands of device keys turns into minutes.
        self.used_prefixes.add(prefix.lower())

    def is_used(self, key: str) -> bool:
        lower = key.lower()
        return lower in self.used or lower.partition(".")[0] + "." in self.used_prefixes

    def note(self, subject: str, verdict: Verdict, reason: str, *, quiet: bool = False) -> None:
        """Say what became of a device (all its keys) or of one key, and why (``quiet``: not at power-on)."""
        self.notes[subject.lower()] = KeyNote(subject, verdict, reason, quiet)

    def fail(self, key: str, problem: str, hint: str) -> SpecError:
        line = self.doc.line_of(key)
        where = f"{self.doc.source}:{line}" if line else self.doc.source
        return SpecError(f"{where}: {problem}", hint=hint, line=line)

    def integer(self, key: str, default: int, *, low: int, high: int, unit: str = "") -> int:
        raw = self.get(key)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw.strip(), 0)
        except ValueError:
            raise self.fail(key, f"{key} = {excerpt(raw)} is not a whole number",
                            f"write a number, e.g. {key} = \"{default}\"") from None
        if not low <= value <= high:
            raise self.fail(key, f"{key} = {value}{unit} is out of range",
                            f"use a value from {low} to {high}{unit}")
        return value

    # -- the whole spec ------------------------------------------------
    def read(self) -> VmSpec:
        self.refuse_unrunnable()
        self.check_device_counts()
        memory = self.integer("memSize", 32, low=MEMORY_MIB[0], high=MEMORY_MIB[1], unit=" MiB")
        cpus = self.integer("numvcpus", 1, low=VCPUS[0], high=VCPUS[1])
        cores = self.integer("cpuid.coresPerSocket", 1, low=1, high=255)
        if cpus % cores:
            raise self.fail("cpuid.coresPerSocket",
                            f"numvcpus = {cpus} is not a multiple of cpuid.coresPerSocket = {cores}",
                            "make numvcpus a multiple of cpuid.coresPerSocket")
        controllers, disks = self.storage()
        spec = VmSpec(
            display_name=self.get("displayName") or "",
            guest_os=(self.get("guestOS") or "other").lower(),
            memory_mib=memory,
            num_cpus=cpus,
            cores_per_socket=cores,
            firmware=self.firmware(),
            nvram=self.get("nvram") or None,
            uuid_bios=self.get("uuid.bios") or None,
            controllers=controllers,
            disks=disks,
            nics=self.nics(),
            serial_ports=self.serial_ports(),
            floppies=self.floppies(),
            display=self.display(),
            boot_order=self.boot_order(),
            boot_classes=self.boot_classes(),
            ready_line=self.ready_line(),
            sched=self.sched(cpus, memory),
            usb=self.usb(),
            sound=self.sound(),
            secure_boot=self.secure_boot(),
        )
        self.mark_ignored()
        unused = tuple(k for k, _ in self.doc.items() if not self.is_used(k))
        unread = tuple(k for k, _ in self.doc.items() if self.is_used(k) and k.lower() not in self.used)
        notes = tuple(self.notes.values())
        warnings = tuple(n.warning for n in notes if n.warns) + tuple(self.warnings)
        return spec.replace(unused_keys=unused, unread_device_keys=unread, warnings=warnings, notes=notes)

    def refuse_unrunnable(self) -> None:
        """Refuse what VMware itself would not power on as it is: encrypted, template and suspended VMs."""
        for key in ("encryption.keySafe", "encryption.data"):
            if self.get(key) is not None:
                raise self.fail(key, f"the VM is encrypted ({key}): its hardware cannot be read without the key",
                                "remove the encryption in VMware (VM settings, Access Control), then use the VM here")
        if parse_bool(self.get("templateVM")):
            raise self.fail("templateVM", "the VM is a template (templateVM = TRUE), which is never powered on",
                            "clone a VM from it in VMware, or set templateVM = \"FALSE\" in a copy")
        state = (self.get("checkpoint.vmState") or "").strip()
        if state:
            line = self.doc.line_of("checkpoint.vmState")
            raise StateError(f"{self.doc.source}:{line}: the VM is suspended (checkpoint.vmState = {excerpt(state)}): "
                             "booting its disks would lose what the suspended guest has not written yet",
                             hint="resume it in VMware and shut it down, or discard the suspended state: "
                                  "checkpoint.vmState = \"\"")

    def check_device_counts(self) -> None:
        """Refuse a device numbered past what a VM can have, instead of leaving it out unsaid."""
        for key, value in self.doc.items():
            match = _PRESENT_KEY.match(key)
            if match and parse_bool(value):
                kind = match[1].lower()
                last = f"{kind}{DEVICE_COUNT[kind] - 1}"
                if len(match[2]) > 3 or int(match[2]) >= DEVICE_COUNT[kind]:
                    raise self.fail(key, f"{excerpt(key)} names a device past the last a VM can have, {last}",
                                    f'number them {kind}0 to {last}, or set that key to "FALSE"')

    def ready_line(self) -> str:
        line = self.get("minivisor.readyLine") or DEFAULT_READY_LINE
        if len(line) > MAX_READY_LINE:
            raise self.fail("minivisor.readyLine", f"minivisor.readyLine is {len(line)} characters long",
                            f"use a line of at most {MAX_READY_LINE} characters that the guest prints when ready")
        return line

    def sched(self, cpus: int, memory: int) -> Sched:
        mem_min = self.integer("sched.mem.min", 0, low=0, high=memory, unit=" MiB")
        return Sched(self.cpu_affinity(), self.shares("sched.cpu.shares", CPU_SHARE_LEVELS, cpus),
                     self.shares("sched.mem.shares", MEM_SHARE_LEVELS, memory), mem_min)

    def cpu_affinity(self) -> tuple[int, ...] | None:
        """The host CPUs of ``sched.cpu.affinity`` (``0,2-3``), or None for all."""
        key = "sched.cpu.affinity"
        raw = (self.get(key) or "all").strip().lower()
        if raw in ("all", ""):
            return None
        cpus: set[int] = set()
        for part in raw.split(","):
            match = _CPU_RANGE.match(part.strip())
            if match is None:
                raise self.fail(key, f"{key} = {excerpt(raw)} is not a CPU list",
                                f'write "all" or host CPU numbers, e.g. {key} = "0,1" or "0-3"')
            low, high = match[1], match[2] or match[1]
            # Checked arithmetically before the range is expanded: "0-20000000" never becomes 20 million
            # numbers (and more digits than a host CPU number has never reach int()).
            if max(len(low), len(high)) > len(str(MAX_HOST_CPUS)) or not int(low) <= int(high) < MAX_HOST_CPUS:
                raise self.fail(key, f"{key} = {excerpt(raw)}: {excerpt(part.strip(), 12)} is not a range of host CPUs",
                                f"host CPUs are numbered 0 to {MAX_HOST_CPUS - 1}; write a range low-high")
            cpus.update(range(int(low), int(high) + 1))
        return tuple(sorted(cpus))

    def shares(self, key: str, levels: dict[str, int], scale: int) -> int | None:
        raw = (self.get(key) or "").strip().lower()
        if raw in ("", "normal"):
            return None  # the default: nothing to ask of the host (and nothing to warn about)
        if raw in levels:
            return levels[raw] * scale
        if _SHARES.match(raw) and 0 < int(raw) <= 1_000_000:
            return int(raw)
        raise self.fail(key, f"{key} = {excerpt(raw)} is not low, normal, high or a number of shares",
                        f'write e.g. {key} = "normal"')

    def mark_ignored(self) -> None:
        """Keys that are bookkeeping, not hardware: understood, nothing to build."""
        for key in (".encoding", "config.version", "virtualHW.version", "guestOSAltName",
                    "annotation", "uuid.location", "uuid.action", "extendedConfigFile"):
            if self.get(key) is not None:
                self.note(key, "ignored", "bookkeeping: nothing to build")
        for key, _ in self.doc.items():
            if _PCI_BRIDGE_KEY.match(key):
                self.get(key)
                self.note(key, "approximated", "VMware's PCI bridges are rebuilt at their addresses where a "
                                               "device's pciSlotNumber puts one behind them: on an EFI VM (a Q35) "
                                               "pciBridge4-7 as PCIe root ports of VMware's slot numbers, on a "
                                               "BIOS VM as PCI-to-PCI bridges (vm explain)", quiet=True)

    def secure_boot(self) -> bool:
        key = "uefi.secureBoot.enabled"
        enabled = parse_bool(self.get(key))
        if enabled and (self.get("firmware") or "bios").strip().lower() != "efi":
            self.note(key, "ignored", 'Secure Boot is a UEFI feature and firmware is not "efi"')
            return False
        return enabled

    def firmware(self) -> Literal["bios", "efi"]:
        value = (self.get("firmware") or "bios").strip().lower()
        if value not in {"bios", "efi"}:
            raise self.fail("firmware", f"firmware = {excerpt(value)} is not bios or efi",
                            'write firmware = "bios" or firmware = "efi"')
        return value  # type: ignore[return-value]

    # -- storage -------------------------------------------------------
    def storage(self) -> tuple[tuple[DiskController, ...], tuple[Disk, ...]]:
        controllers = []
        for bus in BUSES:
            for index in range(CONTROLLER_COUNT[bus]):
                controller = self.controller(bus, index)
                if controller:
                    controllers.append(controller)
        present = {c.name for c in controllers}
        disks = []
        for key in self.device_keys():
            bus, index, unit = key
            if f"{bus}{index}" not in present:
                self.use_prefix(f"{bus}{index}:{unit}.")
                self.note(f"{bus}{index}:{unit}", "ignored", f"its controller {bus}{index} is not present")
                continue
            disk = self.disk(bus, index, unit)
            if disk:
                disks.append(disk)
        return tuple(controllers), tuple(disks)

    def device_keys(self) -> list[tuple[Bus, int, int]]:
        """Every (bus, controller, unit) mentioned, in file order, once."""
        seen: dict[tuple[Bus, int, int], None] = {}
        for key, _ in self.doc.items():
            match = _DEVICE_KEY.match(key)
            if match:
                if len(match[2]) > 3 or len(match[3]) > 3:  # never a slot; and int() of 5,000 digits raises
                    raise self.fail(key, f"{excerpt(key)} names no device slot a VM can have",
                                    "number controllers and units as VMware does, e.g. scsi0:1")
                bus = match.group(1).lower()
                seen[(bus, int(match.group(2)), int(match.group(3)))] = None  # type: ignore[index]
        return list(seen)

    def controller(self, bus: Bus, index: int) -> DiskController | None:
        name = f"{bus}{index}"
        # IDE controllers are built in: they exist without a .present key.
        if not parse_bool(self.get(f"{name}.present"), default=(bus == "ide")):
            self.use_prefix(f"{name}.")
            self.absent(name)
            return None
        if bus != "scsi":
            self.get(f"{name}.virtualDev")
            self.use_prefix(f"{name}.")
            model = {"sata": "ahci", "nvme": "nvme", "ide": "piix4"}[bus]
            return DiskController(bus, index, model, None if bus == "ide" else self.pci_slot(name))
        key = f"{name}.virtualDev"
        model = (self.get(key) or "lsilogic").strip().lower()
        if model not in SCSI_MODELS:
            raise self.fail(key, f"{key} = {excerpt(model)} is not a SCSI controller minivisor knows",
                            f"use one of {', '.join(sorted(SCSI_MODELS))}")
        if SCSI_MODELS[model].approximated:
            # Said at every power-on where the guest may lack the driver: BusLogic guests, and Windows, which
            # has none for the 53C895A. Linux has (sym53c8xx): vm explain and vm check say it.
            windows = (self.get("guestOS") or "").strip().lower().startswith("win")
            self.note(name, "approximated", SCSI_MODELS[model].stands_in, quiet=model == "lsilogic" and not windows)
        self.shared_bus(name)
        self.use_prefix(f"{name}.")
        return DiskController(bus, index, model, self.pci_slot(name))

    def shared_bus(self, controller: str) -> None:
        """``sharedBus`` (clusters on VMware: its disks open in several VMs at once) is not honoured: said."""
        key = f"{controller}.sharedBus"
        value = (self.get(key) or "none").strip().lower()
        if value != "none":
            self.note(key, "approximated", f"the bus is not shared ({quoted(value)}): its disks open in this VM "
                                           "only, and a disk another running VM holds stops the power-on")

    def disk(self, bus: Bus, index: int, unit: int) -> Disk | None:
        node = f"{bus}{index}:{unit}"
        if unit >= UNIT_COUNT[bus] or (bus == "scsi" and unit == 7):
            raise self.fail(f"{node}.present", f"{node} is not a valid device slot",
                            f"{bus} units go from 0 to {UNIT_COUNT[bus] - 1}"
                            + (" (7 is the SCSI controller itself)" if bus == "scsi" else ""))
        file_name = self.get(f"{node}.fileName")
        device_type = self.get(f"{node}.deviceType")
        # The seed (like many hand-written files) describes its disk without a
        # .present key: a device with a file or a type is there unless switched off.
        present = parse_bool(self.get(f"{node}.present"), default=bool(file_name or device_type))
        mode = (self.get(f"{node}.mode") or "persistent").strip().lower()
        self.use_prefix(f"{node}.")
        if not present:
            self.absent(node)
            return None
        kind = self.device_kind(node, device_type, file_name)
        if kind == "cdrom":
            host_drive = (device_type or "").strip().lower() in HOST_CDROM_TYPES
            return Disk(bus, index, unit, kind, self.medium(node, file_name, host_drive=host_drive), read_only=True)
        if not file_name or file_name.strip().lower() in EMPTY_BACKINGS:
            raise self.fail(f"{node}.fileName", f"hard disk {node} has no fileName",
                            f'name its disk file, e.g. {node}.fileName = "disk.vmdk"')
        if mode == "independent-nonpersistent":
            self.note(node, "virtualized", "independent-nonpersistent: what the guest writes is discarded at "
                                           "power-off")
        return Disk(bus, index, unit, kind, file_name, mode=mode)

    def medium(self, device: str, file_name: str | None, *, host_drive: bool) -> str | None:
        """The image a CD-ROM or floppy drive starts with; None: empty (disconnected, with a note saying why)."""
        name = (file_name or "").strip()
        if not parse_bool(self.get(f"{device}.startConnected"), default=True):
            return self.disconnect(device, "startConnected is FALSE")
        if parse_bool(self.get(f"{device}.clientDevice")):
            return self.disconnect(device, "it is the drive of a remote console (clientDevice)")
        if host_drive:
            return self.disconnect(device, f"it is the host's drive {quoted(name or 'auto detect')}, which "
                                           "minivisor never passes through")
        if name.lower() in EMPTY_BACKINGS:
            return None
        if (where := foreign_path(name)) is not None:
            return self.disconnect(device, f"its image {quoted(name)} is {where}, not a file on this host")
        return name

    def disconnect(self, device: str, why: str) -> None:
        self.note(device, "disconnected", f"{why}; the drive starts empty")

    def absent(self, device: str) -> None:
        """A device switched off: its keys, if it has any, are leftovers."""
        if self.doc.keys_with_prefix(f"{device}."):
            self.note(device, "ignored", "present is FALSE: the VM has no such device")

    def device_kind(self, node: str, device_type: str | None, file_name: str | None) -> Literal["disk", "cdrom"]:
        if device_type is None or device_type.strip() == "":
            # VMware omits deviceType for most disks; an .iso is a CD.
            return "cdrom" if (file_name or "").lower().endswith(".iso") else "disk"
        value = device_type.strip().lower()
        if value in HARD_DISK_TYPES:
            return "disk"
        if value in CDROM_TYPES:
            return "cdrom"
        raise self.fail(f"{node}.deviceType",
                        f"{node}.deviceType = {excerpt(device_type)} is not a device type minivisor knows",
                        "use disk, scsi-hardDisk, ata-hardDisk or cdrom-image")

    def boot_order(self) -> tuple[str, ...]:
        order = self.get("bios.hddOrder") or ""
        return tuple(part.strip().lower() for part in order.split(",") if part.strip())

    def boot_classes(self) -> tuple[str, ...]:
        """``bios.bootOrder`` (``cdrom,hdd``): the kinds of device the firmware tries, in turn; the kinds
        it does not name follow in VMware's order."""
        key = "bios.bootOrder"
        named = [part.strip().lower() for part in (self.get(key) or "").split(",") if part.strip()]
        unknown = [kind for kind in named if kind not in BOOT_KINDS]
        if unknown:
            self.note(key, "approximated", f"{quoted(','.join(unknown))} is no device the firmware boots from here "
                                           "(network boot is not offered); the others keep their order")
        kinds = [kind for kind in dict.fromkeys(named) if kind in BOOT_KINDS]
        return tuple(kinds + [kind for kind in BOOT_KINDS if kind not in kinds])

    # -- network -------------------------------------------------------
    def nics(self) -> tuple[Nic, ...]:
        nics = []
        for index in range(DEVICE_COUNT["ethernet"]):
            prefix = f"ethernet{index}"
            present = parse_bool(self.get(f"{prefix}.present"), default=False)
            if not present and not self.doc.keys_with_prefix(f"{prefix}."):
                continue
            # The seed (and many ESXi exports) omit .present on NICs that exist.
            if self.get(f"{prefix}.present") is None:
                present = True
            nic = self.nic(index) if present else None
            self.use_prefix(f"{prefix}.")
            if nic:
                nics.append(nic)
        return tuple(nics)

    def nic(self, index: int) -> Nic:
        prefix = f"ethernet{index}"
        model = (self.get(f"{prefix}.virtualDev") or "e1000").strip().lower()
        if model not in NIC_MODELS:
            raise self.fail(f"{prefix}.virtualDev",
                            f"{prefix}.virtualDev = {excerpt(model)} is not a NIC minivisor knows",
                            f"use one of {', '.join(sorted(NIC_MODELS))}")
        if model in {"vmxnet", "vmxnet2"}:
            self.warnings.append(f"{prefix}: QEMU has no {model}; an AMD PCnet (vlance) is used instead")
        connection = (self.get(f"{prefix}.connectionType") or "bridged").strip().lower()
        if connection not in CONNECTION_TYPES:
            raise self.fail(f"{prefix}.connectionType",
                            f"{prefix}.connectionType = {excerpt(connection)} is not a connection type minivisor knows",
                            f"use one of {', '.join(sorted(CONNECTION_TYPES))}")
        return Nic(index, model, self.mac(prefix), connection, self.network_name(f"{prefix}.networkName"),
                   parse_bool(self.get(f"{prefix}.startConnected"), default=True),
                   self.network_name(f"{prefix}.vnet"), self.pci_slot(prefix))

    def pci_slot(self, device: str) -> int | None:
        """``<device>.pciSlotNumber`` when it names a free place a VM can have; else None (placed after the
        others, as QEMU would, with a note saying why). ``-1``: VMware has not placed it yet."""
        key = f"{device}.pciSlotNumber"
        raw = (self.get(key) or "").strip()
        if raw in ("", "-1"):
            return None
        slot = decode_slot(int(raw)) if is_number(raw, 5) else None
        if slot is None:
            self.note(key, "approximated", f"{quoted(raw)} names no PCI slot minivisor can place a device at; "
                                           "the device is placed after the others (vm explain shows where)")
            return None
        if slot.number in self.pci_slots:
            self.note(key, "approximated", f"slot {slot.number} is {self.pci_slots[slot.number]}'s already; "
                                           "the device is placed after the others (vm explain shows where)")
            return None
        self.pci_slots[slot.number] = device
        return slot.number

    def network_name(self, key: str) -> str | None:
        """A network a NIC names (``networkName``, ``vnet``): any text, bounded; matched against networks later."""
        name = (self.get(key) or "").strip() or None
        if name and len(name) > MAX_NETWORK_NAME:
            raise self.fail(key, f"{key} is {len(name)} characters long",
                            f"name a network in at most {MAX_NETWORK_NAME} characters")
        return name

    def mac(self, prefix: str) -> str | None:
        address_type = (self.get(f"{prefix}.addressType") or "generated").strip().lower()
        key = f"{prefix}.address" if address_type == "static" else f"{prefix}.generatedAddress"
        raw = self.get(key) or (self.get(f"{prefix}.address") if address_type != "static" else None)
        if not raw:
            return None
        mac = normalize_mac(raw)
        if mac is None or int(mac[:2], 16) & 1:
            raise self.fail(key, f"{key} = {excerpt(raw)} is not a unicast MAC address",
                            'write it as six hex pairs, e.g. "00:50:56:aa:bb:cc"')
        return mac

    # -- other devices -------------------------------------------------
    def serial_ports(self) -> tuple[SerialPort, ...]:
        ports = []
        for index in range(DEVICE_COUNT["serial"]):
            prefix = f"serial{index}"
            present = parse_bool(self.get(f"{prefix}.present"))
            port = self.serial_port(index) if present else None
            self.use_prefix(f"{prefix}.")
            if port:
                ports.append(port)
            else:
                self.absent(prefix)
        return tuple(ports)

    def serial_port(self, index: int) -> SerialPort:
        """What a present port is connected to; anything minivisor cannot connect leaves it disconnected."""
        prefix = f"serial{index}"
        file_type = (self.get(f"{prefix}.fileType") or "").strip().lower()
        file_name = (self.get(f"{prefix}.fileName") or "").strip() or None
        if not parse_bool(self.get(f"{prefix}.startConnected"), default=True):
            return self.serial_unplugged(index, "startConnected is FALSE")
        if file_type == "file":
            return (SerialPort(index, "file", file_name) if file_name
                    else self.serial_unplugged(index, "it names no fileName to write to"))
        if file_type == "pipe":
            return self.pipe(index, file_name)
        if file_type == "network":
            return self.network_port(index, file_name or "")
        why = {"thinprint": "ThinPrint (VMware's printer channel) has no counterpart in QEMU",
               "device": f"it is the host's serial port {quoted(file_name or '')}, which minivisor never passes "
                         "through"}.get(file_type, f"fileType {quoted(file_type)} is none minivisor knows")
        return self.serial_unplugged(index, why)

    def serial_unplugged(self, index: int, why: str) -> SerialPort:
        self.note(f"serial{index}", "disconnected", f"{why}; the port is there, connected to nothing")
        return SerialPort(index, "disconnected", None)

    def pipe(self, index: int, file_name: str | None) -> SerialPort:
        """A named pipe is a UNIX socket: the one named in the VM folder, else one in its runtime folder."""
        prefix = f"serial{index}"
        server = (self.get(f"{prefix}.pipe.endPoint") or "server").strip().lower() != "client"
        self.get(f"{prefix}.tryNoRxLoss")
        if file_name and not file_name.startswith("/") and foreign_path(file_name) is None:
            return SerialPort(index, "pipe", file_name, server)
        self.note(prefix, "approximated", f"the pipe {quoted(file_name or '(none)')} is no file name in the VM "
                                          f"folder: the port is the UNIX socket {prefix}.sock in the VM's runtime "
                                          "folder (vm explain shows it)")
        return SerialPort(index, "pipe", None, True)

    def network_port(self, index: int, uri: str) -> SerialPort:
        """``telnet://:2222``, ``tcp://host:2222``: a TCP listener on 127.0.0.1 only; never a connection out."""
        prefix = f"serial{index}"
        scheme, _, rest = uri.rpartition("://")
        host, _, port = rest.rpartition(":")
        if scheme.lower() not in ("", "tcp", "telnet") or not _PORT.match(port) or not 0 < int(port) < 65536 \
                or not _HOST.match(host):
            return self.serial_unplugged(index, f"{quoted(uri) if uri else 'an empty fileName'} is not a network "
                                                "address minivisor can listen on (telnet://:PORT)")
        if (self.get(f"{prefix}.network.endPoint") or "server").strip().lower() == "client":
            return self.serial_unplugged(index, f"it would connect out to {quoted(rest)}, which minivisor never "
                                                "lets a specfile do")
        if host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
            self.note(prefix, "approximated", f"it listens on 127.0.0.1:{port} only, not on "
                                              f"{quoted(host) if host else 'every address'}")
        return SerialPort(index, "network", None, tcp_port=int(port), telnet=scheme.lower() == "telnet")

    def floppies(self) -> tuple[Floppy, ...]:
        drives = []
        for index in range(DEVICE_COUNT["floppy"]):
            prefix = f"floppy{index}"
            # VMware creates floppy0 unless told otherwise; without a file it is an empty drive.
            present = parse_bool(self.get(f"{prefix}.present"), default=False)
            file_type = (self.get(f"{prefix}.fileType") or "file").strip().lower()
            file_name = self.get(f"{prefix}.fileName") or None
            self.use_prefix(f"{prefix}.")
            if not present:
                self.absent(prefix)
                continue
            drives.append(Floppy(index, self.medium(prefix, file_name, host_drive=file_type != "file")))
        return tuple(drives)

    def devices_not_built(self) -> None:
        """Devices a specfile turns on that the VM does not get: noted, and a warning at power-on (the guest
        would find them on VMware)."""
        for key, what in DEVICES_NOT_BUILT.items():
            if parse_bool(self.get(key)):
                self.note(key, "ignored", f"the guest gets no {what} (not offered yet)")
                self.warnings.append(f"{key}: the guest gets no {what} (not offered yet)")
        if parse_bool(self.get("RemoteDisplay.vnc.enabled")):
            self.note("RemoteDisplay.vnc.enabled", "approximated", "the screen is served on a UNIX socket only "
                                                                   "(vm display), never on a TCP port")

    def usb(self) -> tuple[UsbController, ...]:
        controllers = []
        for name, model in USB_MODELS.items():
            if parse_bool(self.get(f"{name}.present")):
                self.note(f"{name}.present", "approximated", model.stands_in, quiet=True)
                controllers.append(UsbController(name, self.pci_slot(name)))  # type: ignore[arg-type]
        return tuple(controllers)

    def sound(self) -> Sound | None:
        if not parse_bool(self.get("sound.present")):
            return None
        key = "sound.virtualDev"
        model = (self.get(key) or "hdaudio").strip().lower()
        if model not in SOUND_MODELS:
            self.note(key, "approximated", f"{quoted(model)} is no sound card minivisor knows; "
                                           f"{SOUND_MODELS['hdaudio'].description} stands in")
            model = "hdaudio"
        elif SOUND_MODELS[model].approximated:
            self.note(key, "approximated", SOUND_MODELS[model].stands_in)
        for setting in ("fileName", "autodetect"):  # the host's audio device: the card plays to nothing
            if self.get(f"sound.{setting}") is not None:
                self.note(f"sound.{setting}", "ignored", "the sound card is connected to no host audio device")
        return Sound(model, None if model == "sb16" else self.pci_slot("sound"))

    def display(self) -> Display:
        self.devices_not_built()
        present = parse_bool(self.get("svga.present"), default=True)
        vram = self.integer("svga.vramSize", 4 * 1024 * 1024, low=1024 * 1024, high=256 * 1024 * 1024)
        self.use_prefix("svga.")
        return Display(present, vram)

