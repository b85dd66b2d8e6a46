"""The REST API's typed models: one request model per route, the answers' models, the error envelope.

A route's request model (:data:`REQUESTS`, by the route's core method) holds the
values of its JSON body (POST/PUT/DELETE) or query string (GET); its path
parameters are :data:`VmName` (the one that names the VM) or :data:`Segment`.
Every model refuses fields it does not have, values of another JSON type (strict:
``"5"`` is no number), numbers that are not finite or out of the core's bounds,
and strings beyond their length or with characters their meaning cannot have (a
newline in a NIC's name, a comma in a port forward). Where the core has a check
of its own (a VM's name, a size, a network's name) the model calls it, so both
refuse alike. The core API still checks each argument's range and meaning: these
models are the shape, checked before anything runs.

An answer's model goes by the route's ``returns`` column (:data:`ANSWERS`), or by
its core method where ``returns`` is plain JSON (:data:`ANSWERS_BY_OP`, which has every such route). The
OpenAPI document (:mod:`minivisor.service.openapi`) is made from these models.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, RootModel, TypeAdapter, ValidationError,
                      ValidationInfo, WithJsonSchema)

from ..cluster.config import MAX_TTL, MIN_TTL
from ..core.bounds import (MAX_COMMAND, MAX_DESCRIPTION, MAX_EVENTS, MAX_GUEST_PATH, MAX_SIZE_TEXT,
                           MAX_SNAPSHOT_NAME, MAX_TIMEOUT, check_args)
from ..core.diskops import FORMATS
from ..core.guest import VIAS
from ..core.networks import MODES
from ..datastore.names import VM_NAME, check_vm_name
from ..errors import ArgumentError, HvError, PathError, RequestError
from ..net.names import check_interface_name, check_network_name
from ..spec.devices import CREATABLE_NICS, CREATABLE_SCSI
from ..spec.vmspec import MEMORY_MIB, VCPUS
from ..text import excerpt
from ..vmm.states import VmState
from .routes import Op, check_segment

__all__ = ["arguments", "answer", "Request", "REQUESTS", "ANSWERS", "ANSWERS_BY_OP", "ErrorAnswer", "VmName",
           "Segment", "MAX_STRING", "MAX_ITEMS", "MAX_TEXT"]

MAX_STRING = 4096  # characters in a string without a bound of its own (a path: PATH_MAX)
MAX_ITEMS = 256  # words in a command given as a list
MAX_TEXT = 64 * 1024  # characters of a file's text (a specfile: put_specfile)

_NO_CONTROLS = r"^[^\x00-\x1f\x7f]*$"  # one line: no newline, no NUL, no escape sequence


def _checked(check: Any, **schema: Any) -> Any:
    """A string the core's own ``check`` accepts (it raises the core's error), documented as ``schema``."""
    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", **schema})]


def _no_parent_steps(path: str) -> str:
    """A path without ``..``: the core resolves paths under its path policy, and no client needs to climb."""
    if ".." in path.split("/"):
        raise PathError(f"{excerpt(path)} steps up a folder (..)", hint="name the file by a path without ..")
    return path


def _in_the_datastore(path: str, info: ValidationInfo) -> str:
    """A relative path names a file of the datastore (relative to its top): a service has no working folder a
    client could mean, and its own is wherever it was started."""
    root = (info.context or {}).get("datastore")
    return path if root is None or path.startswith("/") else os.path.join(root, path)


def _size(value: str) -> str:
    check_args(size=value)
    return value


def _segment(value: str) -> str:
    try:
        return check_segment(value)
    except ValueError as exc:  # the path as sent cannot name one thing
        raise PathError(str(exc), hint="see /openapi.json") from None


VmName = _checked(check_vm_name, pattern="^" + VM_NAME.pattern.removesuffix(r"\Z") + "$", maxLength=63,
                  description="a VM's name: 1-63 letters, digits, '.', '_' or '-', first a letter or digit")
Segment = _checked(_segment, minLength=1, maxLength=128, pattern=r"^[^/\\\x00-\x1f\x7f]+$",
                   description="one path segment: no '/', no '\\', no control character, not '.' or '..'")
NetworkName = _checked(check_network_name, maxLength=32,
                       description="a network's name: 1-32 letters, digits, '.', '_' or '-'")
Interface = _checked(check_interface_name, maxLength=15, description="a host network interface, e.g. eth0")
Size = Annotated[str, Field(max_length=MAX_SIZE_TEXT, description="a size such as 512M, 20G or 1T (powers of 1024)",
                            examples=["20G"]), AfterValidator(_size)]
HostPath = Annotated[str, Field(min_length=1, max_length=MAX_STRING, pattern=_NO_CONTROLS,
                                description="a file on the host: in the datastore (relative to it, or absolute) "
                                            "or in a folder allowed for specfiles; no '..'"),
                     AfterValidator(_no_parent_steps), AfterValidator(_in_the_datastore)]
IsoPath = Annotated[str, Field(min_length=1, max_length=MAX_STRING, pattern=_NO_CONTROLS,
                               description="an ISO file: in the VM's folder (relative to it, as in its specfile, or "
                                           "absolute) or in a folder allowed for specfiles; no '..'"),
                    AfterValidator(_no_parent_steps)]
Folder = Annotated[str, Field(max_length=MAX_STRING, pattern=_NO_CONTROLS,
                              description="a folder of the datastore, relative to its top ('' the top); no '..'"),
                   AfterValidator(_no_parent_steps)]
SnapshotName = Annotated[str, Field(min_length=1, max_length=MAX_SNAPSHOT_NAME, pattern=_NO_CONTROLS,
                                    description="a snapshot's name (one line)")]
Network = _checked(check_network_name, maxLength=32, description="nat, hostonly, bridged, none or a network's name")
Nic = Annotated[str, Field(pattern=r"^ethernet[0-9]$", description="a NIC: ethernet0 to ethernet9")]
Drive = Annotated[str, Field(max_length=16, pattern=r"^[a-z]+[0-9]+:[0-9]+$",
                             description="a drive's node, e.g. scsi0:0, ide1:0, sata0:1")]
Forward = Annotated[str, Field(max_length=40, pattern=r"^[0-9A-Za-z.:/]+$",
                               description="[ADDR:]HOSTPORT[:GUESTPORT][/tcp|/udp], e.g. 8080:80")]
Seconds = Annotated[float, Field(ge=0, le=MAX_TIMEOUT, description=f"seconds, 0 to {MAX_TIMEOUT:.0f}")]
_HOST = Annotated[str, Field(max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class Request(BaseModel):
    """A request's values: no field beyond the model's, each value of its exact JSON type, numbers finite.

    A default here is the core method's own (a test holds them equal); only the fields a
    request sends are passed on, so the core applies the rest itself."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class NoFields(Request):
    """A route whose only values are in its path."""


# -- requests, in the route table's order ---------------------------------------------
class CreateVm(Request):
    name: VmName
    memory_mib: Annotated[int, Field(ge=MEMORY_MIB[0], le=MEMORY_MIB[1],
                                     description=f"MiB of guest memory, {MEMORY_MIB[0]} to {MEMORY_MIB[1]}")] = 512
    cpus: Annotated[int, Field(ge=VCPUS[0], le=VCPUS[1], description=f"virtual CPUs, {VCPUS[0]} to {VCPUS[1]}")] = 1
    disk_size: Size | None = None
    boot_disk: HostPath | None = None
    network: Network = "nat"
    nic_model: Literal[CREATABLE_NICS] = "vmxnet3"  # type: ignore[valid-type] - the core's own table
    scsi_model: Literal[CREATABLE_SCSI] = "lsilogic"  # type: ignore[valid-type]
    guest_os: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                   description="VMware's guestOS, e.g. other-64, ubuntu-64")] = "other-64"
    firmware: Literal["bios", "efi"] = "bios"
    thick: bool = False
    cdrom: bool = False


class RegisterVm(Request):
    vmx_path: HostPath
    name: VmName | None = None


class PutSpecfile(Request):
    text: Annotated[str, Field(max_length=MAX_TEXT, description="the specfile's whole text")]
    stamp: Annotated[str, Field(max_length=128, pattern=r"^[A-Za-z0-9:._-]*$",
                                description="the stamp GET .../specfile gave with the text it edits")]


class Events(Request):
    limit: Annotated[int, Field(ge=0, le=MAX_EVENTS, description="the last N events; 0: all")] = 100


class StartVm(Request):
    wait_ready: bool = False
    timeout: Seconds = 120.0
    host: _HOST | None = None


class StopVm(Request):
    hard: bool = False
    timeout: Seconds = 30.0


class WaitReady(Request):
    timeout: Seconds = 120.0


class ExecInVm(Request):
    command: (Annotated[list[Annotated[str, Field(max_length=MAX_COMMAND)]], Field(max_length=MAX_ITEMS)]
              | Annotated[str, Field(max_length=MAX_COMMAND)]) = Field(
        description="an argv (each word passed exactly) or one shell command line")
    timeout: Seconds = 60.0
    via: Literal[VIAS] = "auto"  # type: ignore[valid-type]
    wait: bool = Field(True, description="false: start it and answer its pid at once, its output discarded (vmrun's "
                                         "-noWait)")


class CopyFile(Request):
    host_path: HostPath
    guest_path: Annotated[str, Field(min_length=1, max_length=MAX_GUEST_PATH, pattern=_NO_CONTROLS)]


class Autostart(Request):
    enabled: bool


class HaSetting(Request):
    enabled: bool = Field(description="restarted on another host of the cluster when its host dies")


class Cdrom(Request):
    image: IsoPath | None = Field(None, description="the ISO to insert; null ejects")
    drive: Drive | None = None


class CheckVmx(Request):
    vmx_path: HostPath


class DatastoreFiles(Request):
    folder: Folder = ""


class DatastoreDelete(Request):
    folder: Folder
    name: Segment


class VmDiskResize(Request):
    node: Drive
    size: Size


class AddDisk(Request):
    size: Size
    thick: bool = False


class SetResources(Request):
    cpus: Annotated[int, Field(ge=VCPUS[0], le=VCPUS[1], description=f"virtual CPUs, {VCPUS[0]} to {VCPUS[1]}")] \
        | None = None
    memory_mib: Annotated[int, Field(ge=MEMORY_MIB[0], le=MEMORY_MIB[1],
                                     description=f"MiB of guest memory, {MEMORY_MIB[0]} to {MEMORY_MIB[1]}")] \
        | None = None


class SnapshotTake(Request):
    snapshot: SnapshotName
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION)] = ""
    memory: bool | None = Field(None, description="with memory and device state; null: if the VM runs")


class SnapshotNamed(Request):
    snapshot: SnapshotName


class CloneVm(Request):
    target: VmName
    linked: bool = False
    snapshot: SnapshotName | None = None


class ImportVm(Request):
    folder: HostPath
    name: VmName | None = None


class DiskPath(Request):
    path: HostPath


class DiskResize(DiskPath):
    size: Size


class NewDiskFormat(Request):
    """How a new disk file is made: its format (by default its name's), thin unless thick."""

    fmt: Literal[FORMATS] | None = None  # type: ignore[valid-type]
    thick: bool = False


class DiskCreate(DiskResize, NewDiskFormat):
    pass


class DiskConvert(NewDiskFormat):
    source: HostPath
    target: HostPath


class CreateNetwork(Request):
    name: NetworkName
    mode: Literal[MODES] = "nat"  # type: ignore[valid-type]
    subnet: Annotated[str, Field(max_length=18, pattern=r"^[0-9./]+$", description="e.g. 192.168.100.0/24")] | None \
        = None
    bridge: Interface | None = None
    dhcp: bool = True


class SetNic(Request):
    link: bool | None = None
    address: Annotated[str, Field(max_length=15, pattern=r"^[0-9.]+$", description="an IPv4 address")] | None = None


class AddNic(Request):
    nic: Nic
    model: Literal[CREATABLE_NICS] = "vmxnet3"  # type: ignore[valid-type]
    network: Network = "nat"


class PortForwardAdd(Request):
    forward: Forward
    nic: Nic = "ethernet0"


class PortForwardRemove(Request):
    forward: Forward


_ETCD = Annotated[str, Field(max_length=2048, pattern=r"^[A-Za-z0-9.:/\[\],_-]+$",
                             description="etcd's client URLs, comma-separated")]


class ClusterInit(Request):
    etcd: _ETCD
    name: _HOST | None = None
    ttl: Annotated[int, Field(ge=MIN_TTL, le=MAX_TTL)] | None = None


class ClusterJoin(Request):
    etcd: _ETCD
    name: _HOST | None = None


class ClusterLeave(Request):
    force: bool = False


class MigrateVm(Request):
    host: Annotated[_HOST, Field(description="the live host of the cluster to move the running VM to")]


class ReplicateVm(Request):
    host: Annotated[_HOST, Field(description="the live host of the cluster that keeps the replica")]
    every: float = Field(300.0, ge=2, le=7 * 24 * 3600, description="seconds between two rounds [default: 300]")


REQUESTS: dict[str, type[Request]] = {
    "list_vms": NoFields, "create_vm": CreateVm, "register_vm": RegisterVm, "get_vm": NoFields,
    "delete_vm": NoFields, "unregister_vm": NoFields, "explain_vm": NoFields, "get_specfile": NoFields,
    "put_specfile": PutSpecfile, "vm_events": Events, "start_vm": StartVm, "stop_vm": StopVm, "reset_vm": NoFields,
    "pause_vm": NoFields, "resume_vm": NoFields, "wait_ready": WaitReady, "exec_in_vm": ExecInVm,
    "copy_to_guest": CopyFile, "copy_from_guest": CopyFile, "set_autostart": Autostart, "set_ha": HaSetting,
    "reset_nvram": NoFields, "cdrom": Cdrom, "screenshot": NoFields, "check_vmx": CheckVmx, "host_info": NoFields,
    "datastore_files": DatastoreFiles, "datastore_delete": DatastoreDelete, "vm_disks": NoFields,
    "vm_disk_resize": VmDiskResize, "add_disk": AddDisk, "set_resources": SetResources,
    "snapshot_list": NoFields, "snapshot_take": SnapshotTake, "snapshot_revert": SnapshotNamed,
    "snapshot_delete": SnapshotNamed, "clone_vm": CloneVm, "import_vm": ImportVm, "disk_create": DiskCreate,
    "disk_info": DiskPath, "disk_resize": DiskResize, "disk_convert": DiskConvert, "list_networks": NoFields,
    "create_network": CreateNetwork, "get_network": NoFields, "delete_network": NoFields, "vm_addresses": NoFields,
    "set_nic": SetNic, "add_nic": AddNic, "remove_nic": NoFields, "nic_traffic": NoFields,
    "port_forward_list": NoFields, "port_forward_add": PortForwardAdd, "port_forward_remove": PortForwardRemove,
    "cluster_status": NoFields, "cluster_init": ClusterInit, "cluster_join": ClusterJoin,
    "cluster_leave": ClusterLeave, "migrate_vm": MigrateVm, "replicate_vm": ReplicateVm, "stop_replication": NoFields,
}
"""Each route's request model, by its core method (the route table's ``name``)."""


# -- answers ------------------------------------------------------------------------------
class Answer(BaseModel):
    """An answer's shape, for the document and for the tests that hold real answers to it."""

    model_config = ConfigDict(extra="forbid")


class Disk(Answer):
    node: str
    kind: str = Field(description="disk or cdrom")
    file: str | None


class VmNic(Answer):
    name: str
    model: str
    mac: str | None
    network: str | None


class Replicated(Answer):
    """A replication round done: the replica on ``target`` is the VM's disks as of its start (vm replicate --json)."""

    vm: str
    target: str
    full: bool = Field(description="the whole disks were copied (else what the guest wrote since the last copy)")
    bytes: int = Field(description="bytes copied")
    generation: int = Field(description="the replica's generation now")
    seconds: float
    every: float = Field(description="seconds between two rounds")


class ReplicationEnded(Answer):
    vm: str
    target: str = Field(description="the host that removes its replica")
    replicated: bool


class ReplicaOfVm(Answer):
    """A VM's replication (vm replicate): its disks copied in rounds to a replica on another host."""

    vm: str
    source: str = Field(description="the host the VM runs on, which runs the rounds")
    target: str = Field(description="the host that keeps the replica")
    every: float = Field(description="seconds between two rounds")
    created: float
    last_copy: float = Field(description="when the last good copy was taken (Unix time; 0: none yet)")
    generation: int = Field(description="the replica's generation after the last good copy")
    last_bytes: int = Field(description="bytes the last good round copied")
    bitmap: str = Field(description="the dirty bitmap of the writes since the last good copy")
    failed_over_to: str = Field(description="the host HA powered the replica on (\"\": none)")
    failed_over_at: float
    behind: bool = Field(description="no good copy for two intervals and a minute: its rounds fail, or its source "
                                     "is down (a failover would lose more than `every`)")


class Vm(Answer):
    name: str
    uuid: str
    vmx: str = Field(description="the specfile's path")
    state: Literal[tuple(state.value for state in VmState)]  # type: ignore[valid-type]
    state_reason: str | None = Field(description="why QEMU paused the VM by itself (io-error: the datastore is full)")
    state_hint: str | None
    display_name: str
    guest_os: str
    memory_mib: int
    cpus: int
    disks: list[Disk]
    nics: list[VmNic]
    autostart: bool
    pid: int | None
    accel: Literal["kvm", "tcg"] | None
    host: str | None = Field(description="in a cluster, the host whose datastore holds the VM, the only one it "
                                         "runs on (null: a single host)")
    ha: bool | None = Field(None, description="restarted on another host of the cluster when its host dies (vm show "
                                              "only; null: not in a cluster, or the cluster store did not answer)")
    replica: ReplicaOfVm | None = Field(None, description="its replication to another host (vm replicate; vm show "
                                                         "only; null: none, or the cluster store did not answer)")


class VmList(RootModel[list[Vm]]):
    pass


class StartResult(Answer):
    vm: Vm
    warnings: list[str]
    ready_line: str | None = Field(description="the line by which the guest said it was ready (wait_ready)")
    host: str | None = Field(default=None, description="the cluster's host it runs on (none: a single host)")


class Snapshot(Answer):
    uid: int
    name: str
    parent: int | None
    description: str
    created: float = Field(description="seconds since the epoch")
    memory: bool
    memory_file: str | None
    disks: dict[str, str] = Field(description="node -> the file frozen in the snapshot")


class SnapshotInTree(Snapshot):
    depth: int
    current: bool = Field(description="the VM is here: its disks grow from this snapshot")


class SnapshotList(RootModel[list[SnapshotInTree]]):
    """The snapshot tree, depth first."""


class SnapshotRevert(RootModel[tuple[Snapshot, bool]]):
    """The snapshot gone back to, and whether the VM runs (a memory snapshot resumes it)."""


class NetworkAnswer(Answer):
    name: str
    mode: Literal[MODES]  # type: ignore[valid-type]
    subnet: str | None
    gateway: str | None
    dhcp: bool
    bridge: str | None
    uplink: str | None
    state: str = Field(description="active, inactive or user-mode")
    dhcp_pid: int | None
    vms: list[str] = Field(description="the running VMs with a NIC on it")


class NetworkList(RootModel[list[NetworkAnswer]]):
    pass


class Accel(Answer):
    accel: Literal["kvm", "tcg"]
    reason: str
    probed: bool
    warning: str | None


class HostInfo(Answer):
    cpus: int
    memory_mib: int
    available_mib: int
    kernel: str
    qemu: str
    qemu_version: str
    qemu_img: str
    accel: Accel
    networking: str
    image_copies: str = Field("", description="whether qemu-img's copies are confined to the files minivisor "
                                              "checked (Landlock), and why")


class ExecResult(Answer):
    output: str
    exit_code: int
    stderr: str
    via: str
    pid: int | None = Field(description="the command's process in the guest, when not waited for (null otherwise)")


class Event(BaseModel):
    """One event: its type, VM and time, and what its type carries."""

    model_config = ConfigDict(extra="allow")
    type: str
    vm: str
    time: float


class EventList(RootModel[list[Event]]):
    pass


class Specfile(Answer):
    text: str
    stamp: str


class TextAnswer(Answer):
    result: str


class Png(Answer):
    base64: str = Field(description="a PNG image, base64")


class Empty(Answer):
    pass


class ChainLink(Answer):
    file: str
    format: str
    virtual_size: int = Field(description="bytes the guest sees")
    allocated: int = Field(description="bytes the file takes on the host")
    backing_file: str | None
    backing_format: str | None


class DiskInfo(Answer):
    file: str
    format: str
    virtual_size: int = Field(description="bytes the guest sees")
    allocated: int = Field(description="bytes the file takes on the host")
    chain_allocated: int = Field(description="bytes the file and its backing files take")
    thin: bool
    chain: list[ChainLink] = Field(description="the file, then each backing file")


class VmDisk(DiskInfo):
    node: str = Field(description="e.g. scsi0:0")
    fileName: str = Field(description="the file as the specfile names it")
    mode: str = Field(description="persistent, independent-persistent or independent-nonpersistent")


class VmDiskList(RootModel[list[VmDisk]]):
    pass


class NicAddress(Answer):
    nic: str
    mac: str
    network: str | None
    address: str | None = Field(description="the NIC's fixed address on its network")
    lease: Literal["leased", "reserved"] | None
    guest: list[str] | None = Field(description="the addresses the guest's agent reports on it (VM running)")
    interface: str | None = Field(description="the guest's name for it (VM running)")


class NicAddressList(RootModel[list[NicAddress]]):
    pass


class PortForward(Answer):
    vm: str
    nic: str
    protocol: Literal["tcp", "udp"]
    host_addr: str
    host_port: int
    guest_port: int


class PortForwardList(RootModel[list[PortForward]]):
    pass


class PortForwardAdded(PortForward):
    spec: str = Field(description="the forward as ADDR:HOSTPORT:GUESTPORT/PROTOCOL")


class FolderEntry(Answer):
    name: str
    kind: Literal["folder", "file"]
    size: int | None = Field(description="bytes (null: a folder)")
    allocated: int | None
    modified: float = Field(description="seconds since the epoch")


class DatastoreFolder(Answer):
    folder: str
    path: str
    entries: list[FolderEntry]
    capacity: int = Field(description="bytes of the datastore's file system")
    free: int


class CdromMedium(Answer):
    drive: str
    image: str | None = Field(description="the ISO in the drive; null: empty")


class KeyVerdict(Answer):
    key: str
    value: str
    verdict: Literal["virtualized", "approximated", "disconnected", "ignored", "refused"]
    reason: str


class VmxCheck(Answer):
    vmx: str
    powers_on: bool
    counts: dict[Literal["virtualized", "approximated", "disconnected", "ignored", "refused"], int]
    keys: list[KeyVerdict]
    warnings: list[str]
    problems: list[str] = Field(description="why it would not power on")


class VirtualPart(Answer):
    name: str
    description: str
    args: list[str] = Field(description="its part of the VMM's command line")


class ExplanationAnswer(Answer):
    spec: dict[str, Any] = Field(description="the VM's spec as parsed from its specfile")
    hardware: list[VirtualPart]
    argv: list[str] = Field(description="the exact VMM command line")
    warnings: list[str]


class SpecfileChange(Answer):
    """A change written to a powered-off VM's specfile: its new stamp, whether it still powers on."""

    stamp: str = Field(description="the specfile's new stamp")
    powers_on: bool
    warnings: list[str]


class DiskAdded(SpecfileChange):
    node: str
    file: str = Field(description="the new disk's file, as the specfile names it")
    size: int = Field(description="bytes")
    thick: bool


class Resources(SpecfileChange):
    cpus: int
    memory_mib: int


class NvramReset(RootModel[bool]):
    """Whether there was an NVRAM file to delete (a BIOS VM has none)."""


class NicTraffic(RootModel[dict[str, dict[str, int]]]):
    """By NIC (ethernet0...), the counters of its tap (a NIC on user-mode NAT has none, so it is absent)."""


class Copied(Answer):
    """A file copied into or out of the guest."""

    host_path: str
    guest_path: str
    bytes: int


class FileDeleted(Answer):
    folder: str
    name: str
    deleted: bool


class NicChanged(Answer):
    nic: str
    link: Literal["up", "down"] | None = None
    mac: str | None = None
    network: str | None = None
    address: str | None = None


class NicAdded(Answer):
    nic: str
    model: str
    mac: str
    network: str | None
    hotplugged: bool = Field(description="plugged into the running VM at once")
    warnings: list[str]


class NicRemoved(Answer):
    nic: str
    mac: str | None
    hotplugged: bool
    forwards_removed: list[PortForward] = Field(description="the port forwards that went with it")


class ClusterHost(Answer):
    name: str
    this: bool = Field(description="this datastore's host")
    live: bool
    joined: float
    memory_free_mib: int | None = None
    memory_total_mib: int | None = None
    cpus: int | None = None
    vms: list[str] | None = None
    memory_room_mib: int | None = Field(default=None, description="what memory admission would still give VMs")
    load: float | None = Field(default=None, description="the 1-minute load average")
    minivisor: str | None = None
    qemu: str | None = None
    updated: float | None = None


class ClusterMembership(Answer):
    """This datastore's host as a member of the cluster (init, join)."""

    host: str
    endpoints: list[str] = Field(description="etcd's client URLs")
    ttl: int = Field(description="seconds a host stays live without its service's heartbeat")


class HaVm(Answer):
    vm: str = Field(description="its name where it was marked HA")
    uuid: str
    owner: str | None = Field(description="the host that runs it now (null: none)")
    restarts_on: list[str] = Field(description="the live hosts, other than its owner, that could restart it were its "
                                               "host to die: they have it registered, or hold its replica")


class Replication(ReplicaOfVm):
    uuid: str


class ClusterStatus(ClusterMembership):
    etcd: str = Field(description="etcd's version")
    hosts: list[ClusterHost]
    ha: list[HaVm] = Field(description="the VMs marked HA (vm ha VM on)")
    replicas: list[Replication] = Field(description="the replications (vm replicate VM --to HOST)")


class ClusterLeft(Answer):
    host: str
    left: bool


class Migrated(Answer):
    """A live migration done: the VM runs on ``destination`` and is no longer here (``vm migrate --json``)."""

    vm: str
    source: str = Field(description="this host")
    destination: str
    disk_bytes: int = Field(description="bytes of disks mirrored (more than their size when the guest wrote meanwhile)")
    memory_bytes: int = Field(description="bytes of memory sent")
    qemu_downtime_ms: int = Field(description="QEMU's own stop-and-copy downtime")
    handover_ms: int = Field(description="from the memory sent to the destination running the guest")
    downtime_ms: int = Field(description="how long the guest was paused at most: QEMU's downtime plus the handover")
    total_seconds: float


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(description="the error's class (the client raises the same)")
    code: str
    message: str = Field(description="one line: what is wrong")
    hint: str | None = Field(description="one line: how to fix it")
    exit_code: int = Field(description="the CLI's exit status for it")
    details: dict[str, Any] | None = None


class ErrorAnswer(BaseModel):
    """Every error answer: {error: {type, code, message, hint, exit_code}}."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


ANSWERS: dict[str, type[BaseModel]] = {
    "vm": Vm, "vms": VmList, "start": StartResult, "snapshot": Snapshot, "snapshot_revert": SnapshotRevert,
    "network": NetworkAnswer, "networks": NetworkList, "host": HostInfo, "exec": ExecResult, "events": EventList,
    "text": TextAnswer, "bytes": Png, "none": Empty, "explanation": ExplanationAnswer,
}
"""An answer's model, by the route table's ``returns``."""

ANSWERS_BY_OP: dict[str, type[BaseModel]] = {
    "snapshot_list": SnapshotList, "get_specfile": Specfile, "vm_disks": VmDiskList, "disk_info": DiskInfo,
    "vm_addresses": NicAddressList, "port_forward_list": PortForwardList, "port_forward_add": PortForwardAdded,
    "datastore_files": DatastoreFolder, "cdrom": CdromMedium, "check_vmx": VmxCheck,
    "cluster_status": ClusterStatus, "disk_create": DiskInfo, "disk_resize": DiskInfo, "disk_convert": DiskInfo,
    "vm_disk_resize": VmDisk, "add_disk": DiskAdded, "set_resources": Resources, "datastore_delete": FileDeleted,
    "set_nic": NicChanged, "add_nic": NicAdded, "remove_nic": NicRemoved, "put_specfile": SpecfileChange,
    "reset_nvram": NvramReset, "nic_traffic": NicTraffic, "cluster_init": ClusterMembership,
    "cluster_join": ClusterMembership, "cluster_leave": ClusterLeft, "copy_to_guest": Copied,
    "copy_from_guest": Copied, "migrate_vm": Migrated, "replicate_vm": Replicated,
    "stop_replication": ReplicationEnded,
}
"""The answers of routes whose ``returns`` is plain JSON, each of its own shape (every one has a model)."""


def answer(op: Op) -> type[BaseModel]:
    """The model of ``op``'s answer on success (KeyError: a route of plain JSON not in :data:`ANSWERS_BY_OP`)."""
    return ANSWERS_BY_OP[op.name] if op.returns == "json" else ANSWERS[op.returns]


# -- checking a request -------------------------------------------------------------------
_PATH_VALUES = {"vm": TypeAdapter(VmName), "segment": TypeAdapter(Segment)}


def arguments(op: Op, path_params: dict[str, str], values: dict[str, Any],
              datastore: str | None = None) -> dict[str, Any]:
    """The keyword arguments for ``op``'s core method: its path parameters and the values its request model
    accepts (only those sent: the core applies its own defaults), or the first fault as one HvError. A relative
    host path is made relative to ``datastore``'s top."""
    for param, value in path_params.items():
        _PATH_VALUES["vm" if param == op.vm_param else "segment"].validate_python(value, strict=True)
    model = REQUESTS[op.name]
    try:
        checked = model.model_validate(values, context={"datastore": datastore})
    except ValidationError as exc:
        raise _refusal(op, model, exc) from None
    return {**path_params, **checked.model_dump(exclude_unset=True)}


def _refusal(op: Op, model: type[Request], exc: ValidationError) -> HvError:
    """The first fault of a request's values, in one line: what is wrong with which field, and how to fix it."""
    error = exc.errors(include_url=False)[0]
    field, kind = str(error["loc"][0]) if error["loc"] else "the request", error["type"]
    if kind == "extra_forbidden":
        return RequestError(f"unknown field {excerpt(field)} for {op.name}",
                            hint=f"the fields are: {', '.join(model.model_fields) or 'none'}")
    if kind == "missing":
        return RequestError(f"missing field {field!r} for {op.name}", hint="see /openapi.json")
    if kind.endswith("_type"):  # JSON of another type: "5" for 5, null for a string
        return RequestError(f"field {field!r} of {op.name} has the wrong type ({_json_type(error['input'])})",
                            hint=f"send {field} as {error['msg'].removeprefix('Input should be ')}")
    described = model.model_fields[field].description if field in model.model_fields else None
    if kind == "string_pattern_mismatch":  # pydantic's message would quote the pattern
        message = f"field {field!r} of {op.name} is not well-formed: {excerpt(error['input'])}"
    else:  # a bound: "field 'timeout' of start_vm: input should be a finite number"
        message = f"field {field!r} of {op.name}: {error['msg'][:1].lower()}{error['msg'][1:]}"
    return ArgumentError(message, hint=f"{field}: {described}" if described else "see /openapi.json")


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
