"""A VM's identity in its specfile: BIOS UUID, NIC addresses, names, new specfiles."""

from __future__ import annotations

import os
import re

from ..digest import sha256
from .vmspec import VmSpec
from .vmx import VmxDocument

__all__ = ["new_specfile", "nic_entries", "fill_identity", "fill_macs", "new_identity", "generated_mac", "uuid_to_vmx",
           "uuid_from_vmx", "random_uuid", "name_from"]

# VMware's prefix for MACs it generates on hosted products.
VMWARE_GENERATED_OUI = "00:0c:29"
_CONNECTION_TYPES = ("nat", "hostonly", "bridged", "none")  # networks a NIC names by connectionType alone
_HEX = frozenset("0123456789abcdefABCDEF")


def generated_mac(uuid: str, index: int) -> str:
    """A stable MAC for NIC ``index`` of the VM with this UUID (VMware's 00:0c:29 prefix)."""
    digest = sha256(f"{uuid}/{index}".encode()).digest()
    return VMWARE_GENERATED_OUI + "".join(f":{b:02x}" for b in digest[:3])


def name_from(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:63]
    return name or "vm"


def fill_identity(doc: VmxDocument, spec: VmSpec) -> str:
    """Make sure the specfile has a BIOS UUID and NIC addresses; return the UUID."""
    vm_uuid = uuid_from_vmx(spec.uuid_bios) if spec.uuid_bios else None
    if vm_uuid is None:
        vm_uuid = random_uuid()
        doc.set("uuid.bios", uuid_to_vmx(vm_uuid))
    fill_macs(doc, spec, vm_uuid)
    return vm_uuid


def fill_macs(doc: VmxDocument, spec: VmSpec, vm_uuid: str) -> bool:
    """Give every NIC without an address its stable generated one, as VMware does; True if any was missing."""
    missing = [nic for nic in spec.nics if nic.mac is None]
    for nic in missing:
        doc.set(f"{nic.name}.addressType", "generated")
        doc.set(f"{nic.name}.generatedAddress", generated_mac(vm_uuid, nic.index))
    return bool(missing)


def random_uuid() -> str:
    """A new random UUID as text: ``str(uuid.uuid4())``, without importing uuid (with platform: ~3 ms of a clone's
    or a registration's CPU)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return _dashed(raw.hex())


def _dashed(digits: str) -> str:
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def uuid_to_vmx(value: str) -> str:
    """``550e8400-...`` -> VMware's ``55 0e 84 00 ... -..`` form (ValueError if ``value`` is no UUID)."""
    if len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-" and \
            all(c in _HEX for c in value.replace("-", "")):  # the form minivisor writes: no uuid module needed
        raw = value.replace("-", "").lower()
    else:
        import uuid as uuidlib

        raw = uuidlib.UUID(value).hex
    pairs = [raw[i:i + 2] for i in range(0, 32, 2)]
    return " ".join(pairs[:8]) + "-" + " ".join(pairs[8:])


def uuid_from_vmx(value: str) -> str | None:
    """VMware's ``55 0e 84 00 ... -..`` -> ``550e8400-...`` (what str(uuid.UUID(...)) gives), None if not 32 digits."""
    digits = re.sub(r"[^0-9a-fA-F]", "", value).lower()
    if len(digits) != 32:
        return None
    return _dashed(digits)



def new_specfile(name: str, vm_uuid: str, memory_mib: int, cpus: int, guest_os: str, disk: str | None,
                  network: str, nic_model: str, scsi_model: str, *, firmware: str = "bios",
                  cdrom: bool = False) -> VmxDocument:
    """A specfile as VMware Workstation would write it for these choices (``cdrom``: an empty IDE CD-ROM drive)."""
    doc = VmxDocument.parse(b'.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "14"\n')
    entries = {"displayName": name, "guestOS": guest_os, "firmware": firmware, "uuid.bios": uuid_to_vmx(vm_uuid),
               "memSize": str(memory_mib), "numvcpus": str(cpus), "cpuid.coresPerSocket": "1",
               "svga.present": "TRUE", "floppy0.present": "FALSE"}
    if disk:
        entries |= {"scsi0.present": "TRUE", "scsi0.virtualDev": scsi_model, "scsi0:0.present": "TRUE",
                    "scsi0:0.deviceType": "scsi-hardDisk", "scsi0:0.fileName": disk}
    if cdrom:
        entries |= {"ide1:0.present": "TRUE", "ide1:0.deviceType": "cdrom-image", "ide1:0.fileName": "",
                    "ide1:0.startConnected": "TRUE"}
    if network != "none":
        entries |= nic_entries(0, vm_uuid, network, nic_model)
    for key, value in entries.items():
        doc.set(key, value)
    return doc


def nic_entries(index: int, vm_uuid: str, network: str, model: str) -> dict[str, str]:
    """The keys of a new NIC ``ethernetN`` as VMware writes them: its model, its network (VMware's own
    connection types by name, any other network by ``networkName``) and its stable generated MAC."""
    connection = ({"connectionType": network} if network in _CONNECTION_TYPES
                  else {"connectionType": "custom", "networkName": network})
    entries = {"present": "TRUE", "virtualDev": model, **connection, "addressType": "generated",
               "generatedAddress": generated_mac(vm_uuid, index)}
    return {f"ethernet{index}.{key}": value for key, value in entries.items()}


def new_identity(doc: VmxDocument, name: str, new_uuid: str, spec: VmSpec) -> None:
    """A new display name, ``uuid.bios`` and generated MAC for every NIC."""
    doc.set("displayName", name)
    doc.set("uuid.bios", uuid_to_vmx(new_uuid))
    for nic in spec.nics:
        doc.delete(f"{nic.name}.address")
        doc.delete(f"{nic.name}.generatedAddressOffset")
        doc.set(f"{nic.name}.addressType", "generated")
        doc.set(f"{nic.name}.generatedAddress", generated_mac(new_uuid, nic.index))
