"""The switch of a network: a Linux bridge, and a tap per NIC plugged into it (``ip``, iproute2).

Every link made here gets an alias (``ip link set NAME alias``) that says it is
minivisor's and whose it is: ``minivisor:network:NAME`` for a bridge,
``minivisor:tap:VM-UUID:INDEX:MAC:NETWORK`` for a tap. Clean-ups look at aliases,
so no interface a user made is ever deleted. Taps are persistent (QEMU opens
them by name with ``script=no``), so minivisor deletes them when their VM
powers off, and finds the ones a crash left by their alias.
"""

from __future__ import annotations

import ipaddress
import json
import re

from ..errors import NetworkError, NotFoundError
from ..records import Record
from ..text import excerpt
from .host import run
from .names import ALIAS_PREFIX

__all__ = ["Link", "TapOwner", "links", "used_networks", "make_bridge", "delete_link", "plug_tap", "attach_uplink",
           "detach_uplink", "set_sysctl", "addresses_of", "is_host_address", "bridge_alias", "tap_alias", "require_link", "tap_counters"]

_SYSCTL_KEY = re.compile(r"net/ipv4/(ip_forward|conf/(?!\.\.?/)[A-Za-z0-9_.-]{1,15}/[a-z_]+)\Z")


class Link(Record, frozen=True):
    """A network interface of the host as ``ip -j link`` shows it."""

    name: str
    alias: str
    master: str | None
    kind: str | None  # bridge, tun, veth... (None: a physical NIC)

    @property
    def ours(self) -> bool:
        return self.alias.startswith(ALIAS_PREFIX)


class TapOwner(Record, frozen=True):
    """Whose a tap is, read back from its alias."""

    vm_uuid: str
    index: int
    mac: str
    network: str

    @classmethod
    def of(cls, link: Link) -> TapOwner | None:
        parts = link.alias.split(":", 2)
        if not link.ours or len(parts) < 3 or parts[1] != "tap":
            return None
        fields = parts[2].split("/")
        if len(fields) != 4 or not fields[1].isdigit():
            return None
        return cls(fields[0], int(fields[1]), fields[2], fields[3])


def bridge_alias(network: str) -> str:
    return f"{ALIAS_PREFIX}network:{network}"


def tap_alias(vm_uuid: str, index: int, mac: str, network: str) -> str:
    # "/" between fields: a MAC has colons, a network name has no slash.
    return f"{ALIAS_PREFIX}tap:{vm_uuid}/{index}/{mac}/{network}"


def links() -> dict[str, Link]:
    """Every interface of the host (of this network namespace), by name."""
    found = {}
    for item in json.loads(run(["ip", "-j", "-d", "link", "show"], "list the host's interfaces") or "[]"):
        kind = (item.get("linkinfo") or {}).get("info_kind")
        found[item["ifname"]] = Link(item["ifname"], item.get("ifalias", ""), item.get("master"), kind)
    return found


def require_link(name: str) -> Link:
    """An interface of the host, or NotFoundError."""
    link = links().get(name)
    if link is None:
        raise NotFoundError(f"this host has no network interface {name!r}",
                            hint="see its interfaces with: ip link")
    return link


def addresses_of(interface: str | None = None) -> list[ipaddress.IPv4Interface]:
    """The IPv4 addresses of one interface, or of every interface of the host."""
    device = ["dev", interface] if interface else []
    text = run(["ip", "-j", "-4", "addr", "show", *device], f"read the addresses of {interface or 'the host'}")
    return [ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
            for item in json.loads(text or "[]") for a in item.get("addr_info", [])]


def is_host_address(address: str) -> bool:
    """Whether ``address`` is this host's own: 0.0.0.0 (every one), a loopback address or an interface's."""
    wanted = ipaddress.IPv4Address(address)
    return wanted.is_unspecified or wanted.is_loopback or any(a.ip == wanted for a in addresses_of())


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address or a route in: a new network must overlap none."""
    found = [address.network for address in addresses_of()]
    for route in json.loads(run(["ip", "-j", "-4", "route", "show"], "list the host's routes") or "[]"):
        if route.get("dst") not in (None, "default"):
            found.append(ipaddress.IPv4Network(route["dst"] if "/" in route["dst"] else f"{route['dst']}/32",
                                               strict=False))
    return found


def make_bridge(name: str, network: str, address: ipaddress.IPv4Interface | None, *, exists: bool) -> None:
    """The network's bridge, up, with the host's address on it (if any): made, or completed if it ``exists``."""
    if not exists:
        run(["ip", "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"],
            f"create the bridge {name}")
    run(["ip", "link", "set", name, "alias", bridge_alias(network)], f"name the bridge {name}")
    if address is not None:
        run(["ip", "addr", "replace", str(address), "dev", name], f"give {name} the address {address}")
    run(["ip", "link", "set", name, "up"], f"bring {name} up")


def delete_link(name: str) -> None:
    """Delete an interface (a bridge or a tap of minivisor's); gone already is fine."""
    run(["ip", "link", "del", name], f"delete {name}", check=False)


def plug_tap(name: str, bridge: str, alias: str, *, stale: bool) -> None:
    """A fresh tap plugged into ``bridge`` and up (a ``stale`` one, a crash's leftover of that name, is replaced)."""
    if stale:
        delete_link(name)
    run(["ip", "tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"], f"create the tap {name}")
    try:
        run(["ip", "link", "set", name, "alias", alias, "master", bridge, "up"], f"plug {name} into {bridge}")
    except BaseException:
        delete_link(name)
        raise


def attach_uplink(uplink: str, bridge: str) -> None:
    run(["ip", "link", "set", uplink, "master", bridge, "up"], f"put {uplink} on the bridge {bridge}")


def detach_uplink(uplink: str) -> None:
    run(["ip", "link", "set", uplink, "nomaster"], f"take {uplink} off its bridge", check=False)


def set_sysctl(key: str, value: str) -> None:
    """Set a kernel network setting (``net/ipv4/ip_forward``) of this network namespace."""
    if not _SYSCTL_KEY.match(key):  # an interface name from the catalog is part of some keys
        raise NetworkError(f"{excerpt(key)} is not a network setting", hint="check the network's bridge name")
    try:
        with open(f"/proc/sys/{key}", "w") as handle:
            handle.write(value)
    except OSError as exc:
        raise NetworkError(f"cannot set {key} to {value}: {exc.strerror}",
                           hint="run minivisor as root, in a network namespace it may change") from exc


def tap_counters(name: str, vm_uuid: str) -> dict[str, int] | None:
    """What the guest sent and received through its tap ``name`` (the kernel's counters), or None if there is no
    such tap of that VM. The tap is the host's end: what it receives, the guest sent."""
    folder = f"/sys/class/net/{name}"
    try:
        with open(f"{folder}/ifalias") as handle:
            owner = TapOwner.of(Link(name, handle.read().strip(), None, "tun"))
        if owner is None or owner.vm_uuid != vm_uuid:
            return None
        kernel = {}
        for counter in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
            with open(f"{folder}/statistics/{counter}") as handle:
                kernel[counter] = int(handle.read())
    except (OSError, ValueError):
        return None  # no such tap, or it went with its VM just now
    return {"received_bytes": kernel["tx_bytes"], "sent_bytes": kernel["rx_bytes"],
            "received_packets": kernel["tx_packets"], "sent_packets": kernel["rx_packets"]}
