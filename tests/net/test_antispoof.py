"""A guest cannot speak as another VM on its network (the taps' guard, ``bridge minivisor``), seen from the guests.

In a network namespace of the module's own (see conftest), network ``A`` (NAT)
holds ``atk`` (the attacker, virtio) and ``vic`` (e1000), both running, and
``away``, powered off with an address reserved for its MAC. ``atk`` sends what a
hostile guest can: frames with ``vic``'s MAC (``ip link set eth0 address``), and,
with ``rawframe`` (beside this module, built here, copied into the guest), any
frame with its own MAC as source: a DHCP request with ``away``'s MAC as chaddr,
ARP naming ``away``'s MAC. Each check has its control: the same thing done
honestly gets through. The tests run in file order; the last one powers
everything off and deletes the network, and checks nothing is left.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from guests import guest, guest_address, reaches, wait_for
from vmm_guard import processes

from minivisor import Hypervisor
from minivisor.net.dhcp import dhcp_files

pytestmark = pytest.mark.qemu

SUBNET = "192.168.65.0/24"  # network A
GATEWAY = "192.168.65.1"
AWAY_ADDRESS = "192.168.65.50"
BROADCAST = "ff:ff:ff:ff:ff:ff"
ALL_NODES = "33:33:00:00:00:01"  # ff02::1's multicast MAC
ETH_P_ALL = 0x0003


@pytest.fixture(scope="module")
def rawframe(tmp_path_factory) -> bytes:
    """The guest's frame sender, compiled for the guest (static, no libc: the guest has busybox only) with the
    compiler setup.sh installs for the test guest's kernel (gcc-12: Debian's plain `gcc` may not be there)."""
    out = tmp_path_factory.mktemp("rawframe") / "rawframe"
    subprocess.run(["gcc-12", "-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector",
                    "-fno-asynchronous-unwind-tables", "-no-pie", "-fno-pie", "-s", "-Wl,--build-id=none",
                    "-Wl,-z,noseparate-code", "-o", str(out), str(Path(__file__).with_name("rawframe.c"))],
                   check=True, capture_output=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def spoof_lab(appliance_lab, appliance_image, rawframe):
    lab = appliance_lab
    for name, model in (("atk", "virtio"), ("vic", "e1000")):
        lab.appliance_vm(name, appliance_image, "A", model)
    lab.appliance_vm("away", appliance_image, "A", "e1000", start=False)
    lab.mv("vm", "nic", "away", "ethernet0", "--ip", AWAY_ADDRESS)
    hv = Hypervisor(lab.datastore)
    encoded = base64.b64encode(rawframe).decode()  # one guest command line holds it (4 KiB)
    assert guest(hv, "atk", f"echo {encoded} | base64 -d >/rawframe && chmod 755 /rawframe")[1] == 0
    for vm in ("atk", "vic"):
        guest_address(hv, vm)
    return lab, hv


def mac_of(lab, vm: str) -> str:
    (nic,) = lab.mv_json("vm", "ip", vm)
    return nic["mac"]


def tap_of(lab, vm: str) -> str:
    """The tap of the VM's NIC: its alias names the NIC's MAC."""
    mac = mac_of(lab, vm)
    (tap,) = [item["ifname"] for item in json.loads(lab.sh("ip -j -d link show"))
              if item.get("ifalias", "").startswith("minivisor:tap:") and f"/{mac}/" in item["ifalias"]]
    return tap


def send(hv, *frames: bytes) -> None:
    """Each frame out of atk's eth0 exactly as written (its guest's kernel adds nothing)."""
    for frame in frames:
        output, status = guest(hv, "atk", f"echo {frame.hex()} | xxd -r -p | /rawframe")
        assert status == 0, f"rawframe could not send: {output!r}"


def ethernet(source: str, destination: str, ethertype: int, payload: bytes) -> bytes:
    return bytes.fromhex(destination.replace(":", "")) + bytes.fromhex(source.replace(":", "")) + \
        struct.pack("!H", ethertype) + payload


def dhcp_request(source: str, chaddr: str, address: str, hostname: str) -> list[bytes]:
    """A DHCPREQUEST (INIT-REBOOT: no server named, the address asked for) for ``chaddr`` with the broadcast
    flag, in a broadcast frame from ``source``."""
    return [ethernet(source, BROADCAST, 0x0800, packet) for packet in _ip_packets(_dhcp_datagram(chaddr, address,
                                                                                                 hostname))]


def fragmented_dhcp_request(source: str, chaddr: str, address: str, hostname: str) -> list[bytes]:
    """The same request in two IPv4 fragments, the first ending 8 bytes into the DHCP message (before chaddr)."""
    return [ethernet(source, BROADCAST, 0x0800, packet)
            for packet in _ip_packets(_dhcp_datagram(chaddr, address, hostname), split=16)]


def _dhcp_datagram(chaddr: str, address: str, hostname: str) -> bytes:
    client = bytes.fromhex(chaddr.replace(":", ""))
    options = bytes([53, 1, 3, 50, 4]) + ipaddress.IPv4Address(address).packed + bytes([61, 7, 1]) + client + \
        bytes([12, len(hostname)]) + hostname.encode() + bytes([255])
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128sI", 1, 1, 6, 0, secrets.randbits(32), 0, 0x8000, bytes(4),
                        bytes(4), bytes(4), bytes(4), client, b"", b"", 0x63825363) + options
    bootp += bytes(max(0, 300 - len(bootp)))
    return struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp  # checksum 0: none (IPv4 allows it)


def _ip_packets(udp: bytes, split: int | None = None) -> list[bytes]:
    """UDP from 0.0.0.0 to 255.255.255.255: one packet, or two fragments (the first ``split`` bytes long)."""
    ident = secrets.randbits(16)
    pieces = [(udp, 0)] if split is None else [(udp[:split], 0x2000), (udp[split:], split // 8)]
    packets = []
    for piece, fragment in pieces:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(piece), ident, fragment, 64, 17, 0, bytes(4),
                             bytes([255] * 4))
        packets.append(header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + piece)
    return packets


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_request(source: str, sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    payload = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + bytes.fromhex(sender_mac.replace(":", "")) + \
        ipaddress.IPv4Address(sender_ip).packed + bytes(6) + ipaddress.IPv4Address(target_ip).packed
    return ethernet(source, BROADCAST, 0x0806, payload)


def lease_lines(lab) -> list[str]:
    try:
        return dhcp_files(lab.datastore / ".minivisor", "A").leases.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_a_guest_wearing_another_vms_mac_reaches_no_one_and_does_not_take_its_traffic(spoof_lab):
    lab, hv = spoof_lab
    victim, own, victim_address = mac_of(lab, "vic"), mac_of(lab, "atk"), guest_address(hv, "vic")
    bridge, tap = lab.mv_json("net", "show", "A")["bridge"], tap_of(lab, "atk")
    assert reaches(hv, "atk", GATEWAY) and reaches(hv, "atk", victim_address)  # the check itself works
    # Down and up: the guest forgets its neighbours, so it asks (ARP) as the victim before it sends anything.
    guest(hv, "atk", f"ip link set eth0 down && ip link set eth0 address {victim} && ip link set eth0 up")
    try:
        assert not reaches(hv, "atk", GATEWAY, count=2)
        assert not reaches(hv, "atk", victim_address, count=2)
        # Told the gateway's MAC, it sends IPv4 as the victim without asking, once a second: each such frame
        # would teach the switch that vic's MAC is on atk's port, and send vic's traffic there.
        gateway_mac = lab.sh(f"cat /sys/class/net/{bridge}/address").strip()
        assert guest(hv, "atk", f"arp -i eth0 -s {GATEWAY} {gateway_mac}")[1] == 0
        guest(hv, "atk", f"(ping -c 6 {GATEWAY}) >/dev/null 2>&1 &")
        learned = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            learned += lab.sh(f"bridge fdb show br {bridge}").splitlines()
            time.sleep(0.1)
        assert not [line for line in learned if line.startswith(f"{victim} dev {tap} ")]
        assert reaches(hv, "vic", GATEWAY, count=2)
    finally:
        guest(hv, "atk", f"ip link set eth0 down && ip link set eth0 address {own} && ip link set eth0 up")
    wait_for("atk, its own MAC again, reaches its gateway", lambda: reaches(hv, "atk", GATEWAY))


def test_a_guest_cannot_take_the_address_reserved_for_another_vms_mac(spoof_lab):
    lab, hv = spoof_lab
    own, away = mac_of(lab, "atk"), mac_of(lab, "away")
    control = f"control-{secrets.token_hex(3)}"  # asked honestly, for its own MAC: dnsmasq answers
    send(hv, *dhcp_request(own, own, guest_address(hv, "atk"), control))
    wait_for("dnsmasq saw atk's own request", lambda: any(control in line for line in lease_lines(lab)), 10)
    send(hv, *dhcp_request(own, away, AWAY_ADDRESS, "impostor"))
    send(hv, *fragmented_dhcp_request(own, away, AWAY_ADDRESS, "impostor"))  # chaddr past the first fragment
    time.sleep(2)  # dnsmasq wrote the control's lease at once
    leases = lease_lines(lab)
    assert not [line for line in leases if away in line or AWAY_ADDRESS in line or "impostor" in line]
    assert lab.mv_json("vm", "ip", "away")[0]["lease"] == "reserved"


def test_a_guest_cannot_announce_another_vms_mac_in_arp(spoof_lab):
    lab, hv = spoof_lab
    own, away = mac_of(lab, "atk"), mac_of(lab, "away")
    bridge = lab.mv_json("net", "show", "A")["bridge"]
    control = "192.168.65.51"  # an address of no one's: the host notes who asked for it
    send(hv, arp_request(own, own, control, GATEWAY))
    wait_for("the host noted atk's own ARP", lambda: own in lab.sh(f"ip neigh show {control} dev {bridge}"), 10)
    send(hv, arp_request(own, away, AWAY_ADDRESS, GATEWAY))
    time.sleep(1)
    assert away not in lab.sh(f"ip neigh show dev {bridge}")


def test_a_guest_cannot_answer_as_the_networks_dhcp_server_or_router(spoof_lab):
    """On a NAT network the host serves DHCP and routes: a guest's DHCP offer, router advertisement or DHCPv6
    answer would give the other guests its own gateway and DNS. Each is dropped; the same frame but for the
    port or ICMPv6 type (the control) passes."""
    lab, hv = spoof_lab
    own = mac_of(lab, "atk")
    tag = secrets.token_hex(4)
    frames = {
        "dhcp-offer": udp4_frame(own, 67, 68, f"{tag}-dhcp-offer"),
        "udp4-control": udp4_frame(own, 1067, 68, f"{tag}-udp4-control"),
        "router-advert": icmpv6_frame(own, 134, f"{tag}-router-advert"),
        "icmpv6-control": icmpv6_frame(own, 128, f"{tag}-icmpv6-control"),  # an echo request
        "dhcpv6-reply": udp6_frame(own, 547, 546, f"{tag}-dhcpv6-reply"),
        "udp6-control": udp6_frame(own, 1547, 546, f"{tag}-udp6-control"),
    }
    controls = {"udp4-control", "icmpv6-control", "udp6-control"}
    assert passing(lab, hv, tag, frames, controls) == controls


def test_a_vlan_tag_hides_nothing_from_the_guard(spoof_lab):
    """The kernel takes a frame's VLAN tag off before the bridge sees it, but nft shows the Ethernet header as
    sent: an ARP rule that asked the header's type let a tagged ARP naming another VM's MAC through (and such a
    frame reaches the guests that use that VLAN). With two tags (802.1ad, then 802.1Q), one stays on: dropped."""
    lab, hv = spoof_lab
    own, away = mac_of(lab, "atk"), mac_of(lab, "away")
    tag = secrets.token_hex(4)
    spoofed = arp_request(own, away, AWAY_ADDRESS, GATEWAY)[14:]
    honest = arp_request(own, own, "192.168.65.52", GATEWAY)[14:]
    frames = {  # ARP's 28 bytes, then the marker where Ethernet pads a short frame
        "tagged-spoof": tagged(own, [(0x8100, 5)], 0x0806, spoofed + f"{tag}-tagged-spoof".encode()),
        "tagged-honest": tagged(own, [(0x8100, 5)], 0x0806, honest + f"{tag}-tagged-honest".encode()),
        "double-tagged": tagged(own, [(0x88A8, 7), (0x8100, 5)], 0x0806, honest + f"{tag}-double-tagged".encode()),
        "tagged-control": tagged(own, [(0x8100, 5)], 0x0806, honest + f"{tag}-tagged-control".encode()),
        # the servers' rules too (Ethernet header and all, past the tag)
        "tagged-offer": tagged(own, [(0x8100, 5)], 0x0800, udp4_frame(own, 67, 68, f"{tag}-tagged-offer")[14:]),
        "tagged-advert": tagged(own, [(0x8100, 5)], 0x86DD, icmpv6_frame(own, 134, f"{tag}-tagged-advert")[14:]),
        "tagged-echo": tagged(own, [(0x8100, 5)], 0x86DD, icmpv6_frame(own, 128, f"{tag}-tagged-echo")[14:]),
    }
    assert passing(lab, hv, tag, frames, {"tagged-control", "tagged-echo"}) == {"tagged-honest", "tagged-control",
                                                                                "tagged-echo"}


def tagged(source: str, tags: list[tuple[int, int]], ethertype: int, payload: bytes) -> bytes:
    """A broadcast frame from ``source`` with VLAN ``tags`` (TPID, VLAN id), outermost first."""
    inner = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in tags[1:]) + struct.pack("!H", ethertype)
    return ethernet(source, BROADCAST, tags[0][0], struct.pack("!H", tags[0][1]) + inner + payload)


def passing(lab, hv, tag: str, frames: dict[str, bytes], controls: set[str]) -> set[str]:
    """The kinds of ``frames`` atk sent (in order, each carrying ``<tag>-<kind>``) that passed the guard: seen on
    the bridge, where every broadcast and unclaimed multicast frame on the switch comes up to the host. Waits
    for ``controls``, each sent after the frames it controls: once they came, a dropped frame would have too."""
    bridge = lab.mv_json("net", "show", "A")["bridge"]
    with lab.inside():
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with capture:
        capture.bind((bridge, 0))
        send(hv, *frames.values())
        seen: set[str] = set()
        wait_for("the controls on the bridge", lambda: controls <= _read_kinds(capture, tag, seen), 10)
    return seen


def _read_kinds(capture: socket.socket, tag: str, seen: set[str]) -> set[str]:
    """``seen``, with the kinds of the test's frames (``<tag>-<kind>``) ``capture`` holds now."""
    while True:
        try:
            frame = capture.recv(2048, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return seen
        if (found := frame.find(tag.encode())) >= 0:
            seen.add(frame[found + len(tag) + 1:].decode(errors="replace"))


def udp4_frame(source: str, sport: int, dport: int, payload: str) -> bytes:
    data = payload.encode()
    (packet,) = _ip_packets(struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)
    return ethernet(source, BROADCAST, 0x0800, packet)


def icmpv6_frame(source: str, icmp_type: int, payload: str) -> bytes:
    """An ICMPv6 message of ``icmp_type`` to all nodes (a router advertisement's fixed part, then ``payload``)."""
    return _ipv6_frame(source, 58, struct.pack("!BBHBBHII", icmp_type, 0, 0, 64, 0, 1800, 0, 0) + payload.encode())


def udp6_frame(source: str, sport: int, dport: int, payload: str) -> bytes:
    data = payload.encode()
    return _ipv6_frame(source, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def _ipv6_frame(source: str, next_header: int, body: bytes) -> bytes:
    """From a link-local address to all nodes (ff02::1), as routers and servers announce themselves. Checksums are
    left 0: the guard drops by header fields alone, and the capture reads anything."""
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), next_header, 255,
                         ipaddress.IPv6Address("fe80::1").packed, ipaddress.IPv6Address("ff02::1").packed)
    return ethernet(source, ALL_NODES, 0x86DD, header + body)


def test_the_guard_follows_the_taps_and_nothing_of_minivisor_is_left(spoof_lab):
    lab, hv = spoof_lab
    taps = {vm: tap_of(lab, vm) for vm in ("atk", "vic")}
    assert all(tap in lab.sh("nft list table bridge minivisor") for tap in taps.values())
    # vic's VMM crashes: the clean-up (the service's, at a VMM's exit) finds its tap, and the guard forgets it
    (qemu,) = processes(lambda argv: argv[0].endswith(b"qemu-system-x86_64")
                        and any(os.fsencode(lab.datastore / "vic") in arg for arg in argv))
    os.kill(qemu, signal.SIGKILL)
    wait_for("vic's QEMU is gone", lambda: not Path(f"/proc/{qemu}").exists(), 10)
    assert taps["vic"] in lab.links() and taps["vic"] in lab.sh("nft list table bridge minivisor")  # left behind
    lab.api("clean_up_networks")
    table = lab.sh("nft list table bridge minivisor")
    assert taps["vic"] not in lab.links() and taps["vic"] not in table and taps["atk"] in table
    lab.mv("vm", "stop", "atk", "--hard")
    assert "bridge minivisor" not in lab.sh("nft list tables")  # no tap, no guard
    lab.mv("net", "delete", "A")
    assert lab.minivisor_leftovers() == []
