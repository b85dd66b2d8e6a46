"""``minivisor net ...``: virtual networks."""

from __future__ import annotations

from . import JSON, arg, command, hv, print_json, say

NETWORK = arg("network", metavar="NETWORK", help="The network's name.")


@command("net create", NETWORK,
         arg("--subnet", metavar="CIDR", help="Its IPv4 subnet, e.g. 192.168.50.0/24 [default: a free /24]."),
         arg("--nat", dest="mode", action="store_const", const="nat",
             help="Guests reach out through the host's address (masquerade) [the default]."),
         arg("--isolated", dest="mode", action="store_const", const="isolated",
             help="Guests reach each other and the host only (VMware's host-only)."),
         arg("--bridge", metavar="HOSTIF", help="Guests join the host interface's network (a bridge, or an interface "
                                                "without addresses that minivisor puts on a bridge)."),
         arg("--no-dhcp", dest="dhcp", action="store_false", help="No DHCP server: guests configure themselves."),
         JSON)
def net_create(network: str, subnet: str | None, mode: str | None, bridge: str | None, dhcp: bool,
               as_json: bool) -> None:
    from ..errors import ArgumentError

    if bridge is not None and mode is not None:
        raise ArgumentError(f"--{mode} and --bridge choose different kinds of network", hint="give one of them")
    info = hv().create_network(network, mode="bridged" if bridge else mode or "nat", subnet=subnet, bridge=bridge,
                               dhcp=dhcp)
    print_json(info) if as_json else say(f"created network {info.name}: {_summary(info)}")


@command("net list", JSON)
def net_list(as_json: bool) -> None:
    networks = hv().list_networks()
    if as_json:
        return print_json(networks)
    from .output import table

    table(("NAME", "MODE", "SUBNET", "DHCP", "BRIDGE", "STATE", "VMS"),
          [(n.name, n.mode, n.subnet or (f"via {n.uplink}" if n.uplink else "-"), "yes" if n.dhcp else "no",
            n.bridge or "-", n.state, len(n.vms)) for n in networks])


@command("net show", NETWORK, JSON)
def net_show(network: str, as_json: bool) -> None:
    info = hv().get_network(network)
    if as_json:
        return print_json(info)
    from .output import key_values

    key_values([("name", info.name), ("mode", info.mode), ("subnet", info.subnet or "-"),
                ("host address", info.gateway or "-"), ("bridge", info.bridge or "-"), ("uplink", info.uplink or "-"),
                ("dhcp", f"dnsmasq (pid {info.dhcp_pid})" if info.dhcp_pid else ("yes" if info.dhcp else "no")),
                ("state", info.state), ("running VMs", ", ".join(info.vms) or "none")])


@command("net delete", NETWORK)
def net_delete(network: str) -> None:
    hv().delete_network(network)
    say(f"deleted network {network}")


def _summary(info) -> str:
    if info.mode == "bridged":
        return f"bridged onto {info.uplink} (bridge {info.bridge})"
    return f"{info.mode}, {info.subnet}, host {info.gateway}, bridge {info.bridge}" + ("" if info.dhcp else ", no DHCP")
