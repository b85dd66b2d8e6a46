"""The virtual devices a specfile may name, and what QEMU builds for each: one table per kind.

The spec (:mod:`minivisor.spec.vmspec`) accepts exactly these names, the
launcher (:mod:`minivisor.vmm.argv`) turns them into QEMU devices, and
``vm create`` offers those VMware itself offers for a new VM.
"""

from __future__ import annotations


__all__ = ["DeviceModel", "SCSI_MODELS", "NIC_MODELS", "USB_MODELS", "SOUND_MODELS", "CREATABLE_SCSI",
           "CREATABLE_NICS", "CONTROLLER_COUNT", "UNIT_COUNT"]

# Controllers per bus, and units (device slots) per controller, as VMware numbers them.
CONTROLLER_COUNT = {"scsi": 4, "sata": 4, "nvme": 4, "ide": 2}
UNIT_COUNT = {"scsi": 16, "sata": 30, "nvme": 15, "ide": 2}

from ..records import Record

class DeviceModel(Record, frozen=True):
    """A ``virtualDev`` value: the QEMU driver that stands in for it, and what the guest sees."""

    driver: str
    description: str
    stands_in: str = ""  # when QEMU's chip is not VMware's: which chip stands in, and what the guest needs

    @property
    def approximated(self) -> bool:
        return bool(self.stands_in)


SCSI_MODELS: dict[str, DeviceModel] = {
    "lsilogic": DeviceModel("lsi53c895a", "LSI 53C895A SCSI controller (stands in for VMware's LSI Logic)",
                            "QEMU has no LSI 53C1030 (VMware's LSI Logic); an LSI 53C895A stands in "
                            "(guests need the sym53c8xx driver)"),
    "buslogic": DeviceModel("lsi53c895a", "LSI 53C895A SCSI controller (stands in for BusLogic)",
                            "QEMU has no BusLogic controller; an LSI 53C895A stands in "
                            "(guests need the sym53c8xx driver)"),
    "lsisas1068": DeviceModel("mptsas1068", "LSI SAS1068 SCSI controller"),
    "pvscsi": DeviceModel("pvscsi", "VMware paravirtual SCSI controller"),
    "virtio-scsi": DeviceModel("virtio-scsi-pci", "virtio SCSI controller"),
}
NIC_MODELS: dict[str, DeviceModel] = {
    "vmxnet3": DeviceModel("vmxnet3", "VMware VMXNET3"),
    "e1000": DeviceModel("e1000", "Intel PRO/1000 (82540EM)"),
    "e1000e": DeviceModel("e1000e", "Intel 82574L"),
    "vlance": DeviceModel("pcnet", "AMD PCnet (Am79C970A)"),
    "vmxnet": DeviceModel("pcnet", "AMD PCnet (stands in for vmxnet)"),
    "vmxnet2": DeviceModel("pcnet", "AMD PCnet (stands in for vmxnet2)"),
    "virtio": DeviceModel("virtio-net-pci", "virtio network adapter"),
}
# USB controllers by the key that turns each on. QEMU has none of VMware's own (15ad:0774, 0770, 0779): the
# guest's generic UHCI/EHCI/xHCI drivers bind by PCI class, so these stand-ins are said by vm explain only.
USB_MODELS: dict[str, DeviceModel] = {
    "usb": DeviceModel("piix3-usb-uhci", "USB 1.1 UHCI controller (Intel PIIX3)",
                       "QEMU has no VMware UHCI; Intel's PIIX3 UHCI stands in (guests drive it as any UHCI)"),
    "ehci": DeviceModel("usb-ehci", "USB 2 EHCI controller (Intel 82801D)",
                        "QEMU has no VMware EHCI; Intel's 82801D EHCI stands in (guests drive it as any EHCI)"),
    "usb_xhci": DeviceModel("qemu-xhci", "USB 3 xHCI controller (QEMU xHCI)",
                            "QEMU has no VMware xHCI; QEMU's own xHCI stands in (guests drive it as any xHCI)"),
}
# sound.virtualDev: VMware's HD Audio and Sound Blaster 16 are the chips QEMU has; its ES1371 is not.
SOUND_MODELS: dict[str, DeviceModel] = {
    "hdaudio": DeviceModel("intel-hda", "Intel HD Audio controller (ICH6) with a duplex codec"),
    "es1371": DeviceModel("es1370", "Ensoniq AudioPCI ES1370 (stands in for ES1371)",
                          "QEMU has no Ensoniq ES1371; an ES1370 stands in (guests need its driver: Linux's "
                          "snd-ens1370; Windows has none)"),
    "sb16": DeviceModel("sb16", "Creative Sound Blaster 16 (ISA)"),
}
# What `vm create` offers (the models a new VM gets on VMware, plus virtio).
CREATABLE_SCSI = ("lsilogic", "lsisas1068", "pvscsi")
CREATABLE_NICS = ("vmxnet3", "e1000", "e1000e", "vlance", "virtio")
