"""Names: which network a NIC's specfile keys ask for, and what minivisor calls things on the host.

A MAC written into a file or rule a root-run program reads (dnsmasq's hosts
file, the taps' guard) is checked here first (:func:`checked_mac`).

Every interface minivisor makes carries its prefix (``mvbr``, ``mvt``) *and* an
alias starting with :data:`ALIAS_PREFIX`, so a clean-up never touches an
interface a user made, whatever its name.
"""

from __future__ import annotations

import re

from ..digest import sha256
from ..errors import ArgumentError, NetworkError
from ..spec.vmspec import Nic, normalize_mac
from ..text import excerpt

__all__ = ["NAT", "HOSTONLY", "DEFAULT_NETWORKS", "is_network_name", "check_network_name", "check_interface_name", "wanted_network",
           "tap_name", "bridge_name", "checked_mac", "ALIAS_PREFIX", "BRIDGE_PREFIX", "TAP_PREFIX", "BRIDGED"]

NAT = "nat"  # VMware's VMnet8
HOSTONLY = "hostonly"  # VMware's VMnet1
BRIDGED = "bridged"  # the network `connectionType = "bridged"` NICs join, if the user made one
DEFAULT_NETWORKS = {NAT: "nat", HOSTONLY: "isolated"}  # name -> mode: they exist without `net create`
_VMNETS = {"vmnet8": NAT, "vmnet1": HOSTONLY, "vmnet0": BRIDGED}

BRIDGE_PREFIX = "mvbr"
TAP_PREFIX = "mvt"
ALIAS_PREFIX = "minivisor:"
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}\Z")
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,14}\Z")  # IFNAMSIZ: 15 characters


def is_network_name(name: str) -> bool:
    return bool(_NETWORK_NAME.match(name))


def check_network_name(name: str) -> str:
    """The name if a network may have it, else ArgumentError (it becomes file names and appears in rules)."""
    if not is_network_name(name):
        raise ArgumentError(f"{excerpt(name)} is not a valid network name",
                            hint="use 1-32 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def check_interface_name(name: str) -> str:
    """The name if it can name a host network interface, else ArgumentError."""
    if not _INTERFACE_NAME.match(name):
        raise ArgumentError(f"{excerpt(name)} is not a network interface name",
                            hint="name an interface of this host as `ip link` shows it, e.g. eth0")
    return name


def checked_mac(text: str, whose: str, hint: str) -> str:
    """The MAC in lower-case colon form, or NetworkError saying ``whose`` it is (it came from the catalog or a
    tap's alias, and goes where a stray character would be syntax)."""
    mac = normalize_mac(text)
    if mac is None:
        raise NetworkError(f"{whose} {excerpt(text)}, which is not a MAC", hint=hint)
    return mac


def wanted_network(nic: Nic) -> str | None:
    """The network a NIC asks for, as VMware reads its keys; None: it asks for none (not connected).

    ``networkName`` (ESXi port groups, minivisor's own) wins; ``custom`` names a
    ``vnet`` (``VMnet8`` is ``nat``, ``VMnet1`` ``hostonly``, ``VMnet0`` bridged);
    ``nat``, ``hostonly`` and ``bridged`` name VMware's default networks.
    """
    if nic.network_name:
        return nic.network_name
    if nic.connection_type == "custom" and nic.vnet:
        vnet = nic.vnet.removeprefix("/dev/").lower()
        return _VMNETS.get(vnet, vnet)
    if nic.connection_type in (NAT, HOSTONLY, BRIDGED):
        return nic.connection_type
    return None  # none, pvn (a team LAN segment), custom without vnet


def tap_name(vm_uuid: str, index: int) -> str:
    """The tap of NIC ``index`` of a VM: stable, so a power-on replaces what a crash left."""
    return f"{TAP_PREFIX}{sha256(vm_uuid.encode()).hexdigest()[:10]}{index}"


def bridge_name(taken: set[str]) -> str:
    """The first free ``mvbrN``."""
    number = 0
    while f"{BRIDGE_PREFIX}{number}" in taken:
        number += 1
    return f"{BRIDGE_PREFIX}{number}"
