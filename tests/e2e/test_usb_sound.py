"""End to end: USB controllers (with a tablet, so the pointer tracks) and the sound card a specfile asks
for are on the guest's PCI bus with the IDs of the chips that stand in (no driver needed to see them)."""

from __future__ import annotations

import pytest
from attacks import add_keys
from guests import create_guest

from minivisor.vmm.qmp import QmpSession

pytestmark = pytest.mark.qemu

USB = 'usb.present = "TRUE"\nehci.present = "TRUE"\nusb_xhci.present = "TRUE"\nusb_xhci.pciSlotNumber = "224"\n'
# sound.virtualDev -> the PCI vendor:device the guest finds (the Sound Blaster is an ISA card: none)
SOUND = {"hdaudio": "8086:2668", "es1371": "1274:5000", "sb16": None}
UHCI, EHCI, XHCI = "8086:7020", "8086:24cd", "1b36:000d"
PCI_IDS = "for d in /sys/bus/pci/devices/*; do echo ${d##*/} $(cat $d/vendor):$(cat $d/device); done | sed s/0x//g"


@pytest.mark.parametrize("card", SOUND)
def test_usb_controllers_a_tablet_and_the_sound_card_are_what_the_guest_finds(hv, appliance_image, card):
    create_guest(hv, "media", appliance_image, memory_mib=128, network="none")
    add_keys(hv.datastore.root / "media" / "media.vmx",
             USB + f'sound.present = "TRUE"\nsound.virtualDev = "{card}"\nsound.fileName = "-1"\n'
                   'sound.autodetect = "TRUE"\n')
    result = hv.start_vm("media", wait_ready=True, timeout=120)
    assert [w for w in result.warnings if w.startswith("sound")] == (
        ["sound.virtualDev: QEMU has no Ensoniq ES1371; an ES1370 stands in (guests need its driver: Linux's "
         "snd-ens1370; Windows has none)"] if card == "es1371" else [])
    ids = dict(line.split() for line in hv.exec_in_vm("media", PCI_IDS).output.splitlines())
    found = sorted(ids.values())
    for chip in (UHCI, EHCI, XHCI, SOUND[card]):
        if chip:
            assert found.count(chip) == 1, (chip, ids)
    xhci = next(address for address, chip in ids.items() if chip == XHCI)
    parent = hv.exec_in_vm("media", f"readlink -f /sys/bus/pci/devices/{xhci}").output
    assert parent.split("/")[-2] == "0000:00:17.0"  # pciSlotNumber 224: behind pciBridge6
    with QmpSession(hv.vm_paths("media").qmp_socket) as qmp:
        mice = qmp.execute("query-mice")
    assert [m["name"] for m in mice if m["absolute"]] == ["QEMU HID Tablet"]
    explained = {d.name: d.description for d in hv.explain_vm("media").hardware}
    assert "USB tablet on the USB 3 xHCI controller" in explained["usb"]
    assert "connected to no host audio device" in explained["sound"]
