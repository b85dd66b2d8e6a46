"""Virtual networks, the core's side: what should exist on the host, made so from the catalog.

The catalog holds each network's definition, the DHCP reservations and each
VM's port forwards; :mod:`minivisor.net` builds them on the host. What runs is
read back from the host itself: a VM is on a network while its tap (whose alias
names the VM, the NIC, its MAC and the network) is on the bridge and the VM's
lock is held. So a crash leaves nothing that can disagree: :meth:`Networks.sync`
deletes the taps of VMs that no longer run and loads the firewall table and the
taps' guard (one transaction) again from what is left. Every change to the host
happens under one lock per datastore (``.minivisor/net.lock``), so two processes
never build one network twice.

``nat`` (VMware's VMnet8) and ``hostonly`` (VMnet1) exist by default: they enter
the catalog, with a free subnet, the first time they are used.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from ..datastore.catalog import ForwardEntry, NetworkEntry, Reservation
from ..datastore.inventory import Inventory, file_id, flocked_files
from ..datastore.store import META, Datastore
from ..errors import ArgumentError, ConflictError, HostError, HvError, LockError, NotFoundError
from ..locks import wait_lock
from ..net import addressing, antispoof, dhcp, firewall, switch
from ..net.forwards import PortSpec, parse_forward, parse_host_side, port_user
from ..net.host import Support, support
from ..net.names import DEFAULT_NETWORKS, bridge_name, check_interface_name, check_network_name, tap_name
from ..spec.identity import generated_mac
from ..spec.vmspec import DEVICE_COUNT, Nic
from ..text import excerpt
from ..vmm import hotplug
from ..vmm.argv import HostForward
from ..vmm.plan import HostNetworks, LaunchPlan, NicPlacement, place_nic
from ..vmm.process import VmLock
from .context import VmContext
from .nics import find_nic
from .results import NetworkInfo

__all__ = ["Networks", "MODES"]

MODES = ("nat", "isolated", "bridged")
LOCK_WAIT = 60.0  # seconds a network change waits for the one before it


class Networks:
    """The virtual networks of one datastore."""

    def __init__(self, datastore: Datastore, inventory: Inventory) -> None:
        self.datastore = datastore
        self.inventory = inventory
        self.catalog = datastore.catalog

    @cached_property
    def _support(self) -> Support:
        """Whether this host builds networks: asked once per operation (it stats files and searches PATH)."""
        return support()

    # -- definitions -----------------------------------------------------
    def for_plan(self, vm_uuid: str) -> HostNetworks:
        """The networks a power-on may plug NICs into (defaults included), or why there are none (then NAT is
        QEMU's user-mode networking, which gets the VM's port forwards)."""
        host = self._host_networks()
        return host.replace(user_forwards=self._user_forwards(vm_uuid)) if host.networks is None else host

    def create(self, name: str, *, mode: str = "nat", subnet: str | None = None, bridge: str | None = None,
               dhcp_on: bool = True) -> NetworkInfo:
        """A new network, made on the host at once; if any part fails, nothing of it is left."""
        check_network_name(name)
        self._require_support()
        if mode not in MODES:
            raise ArgumentError(f"{excerpt(mode)} is not a network mode", hint=f"use one of {', '.join(MODES)}")
        if (mode == "bridged") != (bridge is not None):
            raise ArgumentError("a bridged network needs the host interface it bridges (--bridge), and only it",
                                hint="minivisor net create NAME --bridge eth0")
        if mode == "bridged" and subnet is not None:
            raise ArgumentError("a bridged network's addresses are the host network's: it takes no --subnet",
                                hint="leave out --subnet")
        with self._turn():
            if self.catalog.find_network(name):
                raise ConflictError(f"a network named {name!r} already exists", hint="see: minivisor net list")
            entry = self._define(name, mode, subnet, bridge, dhcp_on)
            self.catalog.add_network(entry)
            try:
                self._activate(entry, switch.links())
                self._sync()
            except BaseException:
                self.catalog.remove_network(name)
                with contextlib.suppress(HvError):  # best effort: the error shown is the one that failed the create
                    self._deactivate(entry)
                    self._sync()
                raise
        return self.get(name)

    def list(self) -> list[NetworkInfo]:
        """Every network, the defaults included."""
        host_links = switch.links() if self._support.available else {}
        live = self._live_taps(host_links, prune=False)
        entries = {e.name.lower(): e for e in self._entries_with_defaults()}
        return [self._info(entry, live, host_links) for _, entry in sorted(entries.items())]

    def get(self, name: str) -> NetworkInfo:
        host_links = switch.links() if self._support.available else {}
        return self._info(self._known(name), self._live_taps(host_links, prune=False), host_links)

    def delete(self, name: str) -> None:
        """Remove a network and everything it made on the host; refused while a running VM is on it."""
        self._require_support()
        with self._turn():
            entry = self._known(name)
            users = sorted({self._vm_name(owner.vm_uuid) for owner in self._live_taps(switch.links())
                            if owner.network.lower() == entry.name.lower()})
            if users:
                raise ConflictError(f"network {entry.name!r} is in use by running VM(s): {', '.join(users)}",
                                    hint="power them off first, or move their NICs to another network")
            self._deactivate(entry)
            if self.catalog.find_network(entry.name):
                self.catalog.remove_network(entry.name)
            self._sync()

    # -- VMs on networks ---------------------------------------------------
    def plug(self, ctx: VmContext, plan: LaunchPlan, only: int | None = None) -> None:
        """Before the VMM starts (or NIC ``only`` is hot-plugged): each network it needs up, a reservation per
        NIC, a tap per NIC on its bridge."""
        self._check_user_forwards_free(ctx, plan, only)
        taps = {i: tap for i, tap in plan.taps.items() if only is None or i == only}
        if not taps:
            return
        with self._turn():
            host_links = switch.links()  # one look at the host: what plugging changes is known without another
            live = self._live_taps(host_links)  # taps of VMs that no longer run are gone after this
            plugged: list[str] = []
            up: set[str] = set()
            try:
                for index, tap in taps.items():
                    entry = self._network(tap.network)
                    mac = plan.env.macs[index]
                    self._check_mac_free(ctx, entry, mac, live)
                    if entry.name not in up:
                        self._activate(entry, host_links)
                        up.add(entry.name)
                    if entry.dhcp and entry.subnet:
                        self._reserve(entry, mac, ctx.uuid)
                    switch.plug_tap(tap.ifname, entry.bridge, switch.tap_alias(ctx.uuid, index, mac, entry.name),
                                    stale=tap.ifname in host_links)
                    plugged.append(tap.ifname)
                self._sync()
            except BaseException:
                for name in plugged:
                    switch.delete_link(name)
                raise

    def unplug(self, ctx: VmContext, only: int | None = None) -> None:
        """After the VMM ended (or NIC ``only`` was hot-unplugged): its taps deleted, its port forwards out of
        the firewall."""
        if not self._support.available:
            return
        # Not a turn on the host yet: a VM without taps stops even while another datastore owns the host's networks.
        with self._turn(host=False):
            deleted = False
            for link in switch.links().values():
                owner = switch.TapOwner.of(link)
                if owner is not None and owner.vm_uuid == ctx.uuid and only in (None, owner.index):
                    switch.delete_link(link.name)
                    deleted = True
            if deleted:  # else the firewall table has nothing of this VM's to lose
                self._check_owner()
                self._sync()

    def forget_nic(self, ctx: VmContext, index: int) -> list[dict]:
        """A NIC left the VM: its port forwards go with it (returned); its address stays reserved for its MAC."""
        with self._turn(host=self._support.available):
            gone = [f for f in self.catalog.forwards(ctx.uuid) if f.nic == index]
            for forward in gone:
                self.catalog.remove_forward(forward)
            if gone and self._support.available:
                self._sync()
        return [_forward_dict(f, ctx.name) for f in gone]

    def traffic(self, vm_uuid: str) -> dict[str, dict[str, int]]:
        """Bytes and packets each NIC of a running VM sent and received, by NIC, from its tap (a NIC on QEMU's
        user-mode NAT has no tap, so it is absent: QEMU counts nothing for it)."""
        found = {}
        for index in range(DEVICE_COUNT["ethernet"]):
            counters = switch.tap_counters(tap_name(vm_uuid, index), vm_uuid)
            if counters is not None:
                found[f"ethernet{index}"] = counters
        return found

    def clean_up(self) -> None:
        """Delete what VMMs that died left (taps) and load the firewall table again (service start, a VMM's exit)."""
        if not self._support.available or not any(self._entries_with_defaults(defaults=False)):
            return
        with self._turn():
            self._sync()

    def nic_addresses(self, ctx: VmContext) -> list[dict]:
        """Each NIC of a VM: its MAC, network, reserved address and whether the guest holds a lease on it."""
        found = []
        reserved = self.reserved_addresses(ctx)
        for nic in ctx.read_spec().nics:
            mac = _mac(ctx, nic)
            entry = self._network_named_by(nic)
            address = reserved.get(nic.name)
            leased = bool(entry and address and
                          dhcp.leases(self._dhcp_files(entry.name)).get(mac) == address)
            found.append({"nic": nic.name, "mac": mac, "network": entry.name if entry else None,
                          "address": address, "lease": "leased" if leased else ("reserved" if address else None)})
        return found

    def reserve_address(self, ctx: VmContext, nic_name: str, address: str) -> dict:
        """Give a NIC a fixed address on its network (the guest gets it at its next DHCP renewal)."""
        nic = find_nic(ctx.read_spec(), nic_name, ctx.name)
        entry = self._network_of(nic)
        if entry is None or not entry.subnet:
            raise ConflictError(f"{nic.name} of {ctx.name!r} is not on a network minivisor gives addresses on",
                                hint="put it on a nat or isolated network (ethernetN.networkName)")
        address = addressing.check_reservable(ipaddress.IPv4Network(entry.subnet), address)
        mac = nic.mac or generated_mac(ctx.uuid, nic.index)
        with self._turn():
            holder = self._leased_to_others(entry, mac).get(address)
            if holder is not None:
                raise ConflictError(f"{address} is leased to {holder} on network {entry.name!r}, so the guest "
                                    "would not get it", hint=f"choose another address, or wait until that lease "
                                    f"ends (at most {dhcp.LEASE_TIME} after its VM stopped)")
            self.catalog.reserve(Reservation(entry.name, mac, address, ctx.uuid))
            self._reload_dhcp(entry)
        return {"nic": nic.name, "mac": mac, "network": entry.name, "address": address}

    # -- port forwards -------------------------------------------------------
    def add_forward(self, ctx: VmContext, text: str, nic_name: str) -> dict:
        """Forward a port of the host to a port of one NIC of the VM; kept with the VM, applied while it runs."""
        spec = parse_forward(text)
        if not switch.is_host_address(spec.host_addr):  # else it would divert traffic meant for another machine
            raise ArgumentError(f"{spec.host_addr} is not an address of this host",
                                hint="forward from 127.0.0.1 (the default), 0.0.0.0 (every address of the host) "
                                     "or an address `ip -4 addr` shows")
        nic = find_nic(ctx.read_spec(), nic_name, ctx.name)
        placed = self._placement(nic)
        user, entry = placed.user_nat, placed.entry
        if not user and (entry is None or entry.mode == "bridged"):
            raise ConflictError(f"{nic.name} of {ctx.name!r} is not on a nat or isolated network"
                                f"{f' ({placed.why})' if placed.why else ''}, so no port can be forwarded to it",
                                hint="the guest of a bridged network is reached directly")
        forward = ForwardEntry(ctx.uuid, nic.index, spec.protocol, spec.host_addr, spec.host_port, spec.guest_port)
        with self._turn(host=not user):
            self._check_port_free(spec)
            self.catalog.add_forward(forward)
            try:
                if not user:
                    self._sync()
                elif ctx.running:  # QEMU's user-mode NAT listens for it at once
                    hotplug.add_host_forward(ctx.vmm, nic, _host_forward(forward))
            except BaseException:
                self.catalog.remove_forward(forward)
                raise
        return _forward_dict(forward, ctx.name) | {"spec": str(spec)}

    def forwards(self, ctx: VmContext) -> list[dict]:
        return [_forward_dict(f, ctx.name) for f in self.catalog.forwards(ctx.uuid)]

    def remove_forward(self, ctx: VmContext, text: str) -> None:
        """Remove the forward from ``[ADDR:]HOSTPORT[/udp]`` (or the whole spec it was added with)."""
        protocol, host_addr, host_port = parse_host_side(text)
        match = [f for f in self.catalog.forwards(ctx.uuid)
                 if (f.protocol, f.host_addr, f.host_port) == (protocol, host_addr, host_port)]
        if not match:
            raise NotFoundError(f"VM {ctx.name!r} has no port forward from {host_addr}:{host_port}/{protocol}",
                                hint=f"see them: minivisor vm port-forward list {ctx.name}")
        forward = match[0]
        nic = next((n for n in ctx.read_spec().nics if n.index == forward.nic), None)
        user = nic is not None and self._placement(nic).user_nat
        with self._turn(host=not user):
            if user and ctx.running:
                hotplug.remove_host_forward(ctx.vmm, nic, _host_forward(forward))
            self.catalog.remove_forward(forward)
            if not user and self._support.available:
                self._sync()

    # -- the host ----------------------------------------------------------------
    @contextmanager
    def _turn(self, *, host: bool = True) -> Iterator[None]:
        """This datastore's turn to change networks; ``host``: on the host too (else only the catalog's forwards)."""
        fd = wait_lock(self.datastore.meta / "net.lock", LOCK_WAIT, poll=0.01)
        if fd is None:
            raise LockError("another process is changing this datastore's networks", hint="retry when it is done")
        try:
            if host:
                self._check_owner()
            yield
        finally:
            os.close(fd)

    def _check_owner(self) -> None:
        """One datastore's networks per host (network namespace): the firewall table is built from its catalog.
        The networks of a datastore deleted by hand are removed from the host before this one's are made."""
        owner = firewall.owner()
        if not owner or owner == str(self.datastore.root):
            return
        if os.path.isdir(os.path.join(owner, META)):
            raise ConflictError(f"this host's networks belong to the datastore {owner}",
                                hint="use that datastore, or delete its networks first (minivisor net delete)")
        self._clear_abandoned(owner)

    def _clear_abandoned(self, owner: str) -> None:
        """Stop the dnsmasqs and delete the bridges a deleted datastore left (its taps go in ``_sync``, with every
        tap of a VM that no longer runs; its table is replaced there)."""
        for files in dhcp.datastore_dhcp_files(Path(owner, META)):
            dhcp.stop(files)
        kept = {entry.bridge for entry in self.catalog.networks()}
        for name, link in switch.links().items():
            if link.ours and link.kind == "bridge" and name not in kept:
                switch.delete_link(name)

    def _require_support(self) -> None:
        host = self._support
        if not host.available:
            raise HostError(f"this host cannot make networks: {host.reason}",
                            hint="run minivisor as root on a host with /dev/net/tun, ip, nft and dnsmasq")

    def _define(self, name: str, mode: str, subnet: str | None, uplink: str | None, dhcp_on: bool) -> NetworkEntry:
        """A new network's definition: its subnet checked against the host's, its bridge named."""
        host_links = switch.links()
        taken = {e.bridge for e in self.catalog.networks()} | set(host_links)
        if mode == "bridged":
            assert uplink is not None
            link = host_links.get(check_interface_name(uplink)) or switch.require_link(uplink)
            if link.ours:
                raise ConflictError(f"{uplink} is minivisor's own interface", hint="bridge a host interface")
            if link.kind == "bridge":  # the user's bridge: its ports are the switch (minivisor never deletes it)
                return NetworkEntry(name, mode, None, False, uplink, uplink, time.time())
            if link.master:
                raise ConflictError(f"{uplink} is already on the bridge {link.master}",
                                    hint=f"bridge that one: minivisor net create {name} --bridge {link.master}")
            if switch.addresses_of(uplink):
                raise ConflictError(f"{uplink} has IP addresses: putting it on a bridge would cut the host off them",
                                    hint="make a bridge holding it and its addresses, then: net create NAME --bridge BR")
            return NetworkEntry(name, mode, None, False, bridge_name(taken), uplink, time.time())
        used = [ipaddress.IPv4Network(e.subnet) for e in self.catalog.networks() if e.subnet]
        used += switch.used_networks()
        network = addressing.parse_subnet(subnet) if subnet else addressing.free_subnet(used)
        clash = next((u for u in used if network.overlaps(u)), None)
        if clash is not None:
            raise ConflictError(f"subnet {network} overlaps {clash}, which this host already uses",
                                hint="choose another subnet with --subnet")
        return NetworkEntry(name, mode, str(network), dhcp_on, bridge_name(taken), None, time.time())

    def _activate(self, entry: NetworkEntry, host_links: dict[str, switch.Link]) -> None:
        """The network's bridge (and uplink, dnsmasq) on the host, made or completed; one up already (an earlier
        power-on made it) is left as it is."""
        bridge = host_links.get(entry.bridge)
        if entry.mode == "bridged":
            uplink = host_links.get(entry.uplink or "")
            if entry.bridge != entry.uplink and not (bridge and uplink and uplink.master == entry.bridge):
                switch.make_bridge(entry.bridge, entry.name, None, exists=bridge is not None)
                switch.attach_uplink(entry.uplink or "", entry.bridge)
            return
        files = self._dhcp_files(entry.name)
        if bridge is not None and not (entry.dhcp and dhcp.running_pid(files) is None):
            return
        subnet = ipaddress.IPv4Network(entry.subnet or "")
        switch.make_bridge(entry.bridge, entry.name, addressing.host_interface(subnet), exists=bridge is not None)
        # Port forwards from 127.0.0.1 leave through the bridge with a loopback source (then masqueraded).
        switch.set_sysctl(f"net/ipv4/conf/{entry.bridge}/route_localnet", "1")
        if entry.mode == "nat":
            switch.set_sysctl("net/ipv4/ip_forward", "1")
        if entry.dhcp and dhcp.running_pid(files) is None:
            dhcp.start(files, dhcp.config_text(files, entry.bridge, subnet, router=entry.mode == "nat"),
                       self._reservation_lines(entry))

    def _deactivate(self, entry: NetworkEntry) -> None:
        """Remove what the network made on the host (a user's own bridge stays, without minivisor's taps)."""
        dhcp.stop(self._dhcp_files(entry.name))
        if entry.mode == "bridged" and entry.bridge == entry.uplink:
            return
        if entry.mode == "bridged":
            switch.detach_uplink(entry.uplink or "")
        link = switch.links().get(entry.bridge)
        if link is not None and link.ours:
            switch.delete_link(entry.bridge)

    def _sync(self) -> None:
        """Delete the taps of VMs that no longer run, then load the firewall table and the taps' guard (in one
        transaction) for what is left."""
        host_links = switch.links()
        live = self._live_taps(host_links)
        networks = {entry.name.lower(): entry for entry in self.catalog.networks()}
        switches = [firewall.Switch(entry.bridge, entry.mode,
                                    ipaddress.IPv4Network(entry.subnet) if entry.subnet else None)
                    for entry in networks.values() if entry.bridge in host_links]
        forwards = []
        for owner in live:
            reservations = {r.mac: r.address for r in self.catalog.reservations(owner.network)}
            for forward in self.catalog.forwards(owner.vm_uuid):
                address = reservations.get(owner.mac)
                network = networks.get(owner.network.lower())
                if forward.nic == owner.index and address and network:
                    forwards.append(firewall.Forward(forward.protocol, forward.host_addr, forward.host_port,
                                                     address, forward.guest_port, network.bridge))
        ports = _guarded_ports(host_links, live, networks)
        root = str(self.datastore.root)
        firewall.load(firewall.ruleset(switches, forwards, root) + antispoof.ruleset(ports, root))

    def _live_taps(self, host_links: dict[str, switch.Link], *, prune: bool = True) -> list[switch.TapOwner]:
        """The taps among ``host_links`` of running VMs (whose lock is held); ``prune`` (during a change): those
        of VMs that are gone (a crash, a guest power-off) are deleted."""
        live = []
        owners = [(name, owner) for name, link in host_links.items() if (owner := switch.TapOwner.of(link))]
        locked = flocked_files() if owners else set()
        for name, owner in owners:
            entry = self.catalog.vm_by_uuid(owner.vm_uuid)
            if entry is not None and self._runs(str(self.inventory.paths_of(entry).lock), locked):
                live.append(owner)
            elif prune:
                switch.delete_link(name)
        return live

    @staticmethod
    def _runs(lock: str, locked: set[tuple[int, int]] | None) -> bool:
        """Whether a VM's lock is held: from one read of the kernel's locks, or by trying it if that is hidden."""
        return file_id(lock) in locked if locked is not None else VmLock(lock).is_held_elsewhere()

    def _check_mac_free(self, ctx: VmContext, entry: NetworkEntry, mac: str, live: list[switch.TapOwner]) -> None:
        for owner in live:
            if owner.network.lower() == entry.name.lower() and owner.mac == mac and owner.vm_uuid != ctx.uuid:
                raise ConflictError(f"MAC {mac} is already on network {entry.name!r}: VM "
                                    f"{self._vm_name(owner.vm_uuid)!r} (ethernet{owner.index}) runs with it",
                                    hint=f"give {ctx.name}'s NIC another address, or power the other VM off")

    def _check_port_free(self, spec: PortSpec) -> None:
        for forward in self.catalog.forwards():
            same_port = (forward.protocol, forward.host_port) == (spec.protocol, spec.host_port)
            if same_port and (forward.host_addr == spec.host_addr or "0.0.0.0" in (forward.host_addr, spec.host_addr)):
                raise ConflictError(f"port {spec.host_addr}:{spec.host_port}/{spec.protocol} is already forwarded "
                                    f"to VM {self._vm_name(forward.vm_uuid)!r} (ethernet{forward.nic} port "
                                    f"{forward.guest_port})", hint="choose another host port")
        user = port_user(spec.protocol, spec.host_addr, spec.host_port)
        if user is not None:
            raise ConflictError(f"port {spec.host_addr}:{spec.host_port}/{spec.protocol} of this host is taken by "
                                f"{user}", hint="choose another host port")

    def _check_user_forwards_free(self, ctx: VmContext, plan: LaunchPlan, only: int | None) -> None:
        """QEMU's user-mode NAT listens for the VM's forwards itself: a port something else took after the forward
        was added is refused here, in words, instead of by QEMU failing to start."""
        for index, forwards in plan.user_forwards.items():
            if only not in (None, index):
                continue
            for forward in forwards:
                user = port_user(forward.protocol, forward.host_addr, forward.host_port)
                if user is not None:
                    where = f"{forward.host_addr}:{forward.host_port}/{forward.protocol}"
                    raise ConflictError(f"port {where} of this host, forwarded to {ctx.name}'s ethernet{index} port "
                                        f"{forward.guest_port}, is taken by {user}",
                                        hint=f"stop {user}, or move the forward: minivisor vm port-forward {ctx.name} "
                                             f"remove {forward.host_port}, then add another port")

    def _user_forwards(self, vm_uuid: str) -> dict[int, tuple[HostForward, ...]]:
        """The VM's port forwards by NIC index, as QEMU's user-mode NAT takes them."""
        found: dict[int, tuple[HostForward, ...]] = {}
        for forward in self.catalog.forwards(vm_uuid):
            found[forward.nic] = found.get(forward.nic, ()) + (_host_forward(forward),)
        return found

    def _reserve(self, entry: NetworkEntry, mac: str, vm_uuid: str) -> None:
        """A reservation for a NIC that has none on this network, and dnsmasq told."""
        current = self.catalog.reservations(entry.name)
        if any(r.mac == mac for r in current):
            return
        taken = {r.address for r in current} | set(self._leased_to_others(entry, mac))
        address = addressing.next_reserved(ipaddress.IPv4Network(entry.subnet or ""), taken)
        self.catalog.reserve(Reservation(entry.name, mac, address, vm_uuid))
        self._reload_dhcp(entry)

    def _leased_to_others(self, entry: NetworkEntry, mac: str) -> dict[str, str]:
        """Address -> MAC of the leases dnsmasq holds for other MACs on this network, VMs deleted or stopped
        included (a hard stop sends no DHCPRELEASE, so their leases last LEASE_TIME). dnsmasq never gives a
        reserved address that is leased to another MAC: the guest would get one of the dynamic range instead."""
        return {address: holder for holder, address in dhcp.leases(self._dhcp_files(entry.name)).items()
                if holder != mac.lower()}

    def _reload_dhcp(self, entry: NetworkEntry) -> None:
        dhcp.reload(self._dhcp_files(entry.name), self._reservation_lines(entry))

    def _reservation_lines(self, entry: NetworkEntry) -> list[tuple[str, str]]:
        return [(r.mac, r.address) for r in self.catalog.reservations(entry.name)]

    def _dhcp_files(self, name: str) -> dhcp.DhcpFiles:
        return dhcp.dhcp_files(self.datastore.meta, name)

    def _entries_with_defaults(self, *, defaults: bool = True) -> list[NetworkEntry]:
        """The catalog's networks and (``defaults``) the default ones it does not hold yet, undefined."""
        entries = self.catalog.networks()
        if defaults:
            have = {e.name.lower() for e in entries}
            entries += [_undefined(name) for name in DEFAULT_NETWORKS if name not in have]
        return entries

    def _known(self, name: str) -> NetworkEntry:
        """A network by name (a default one not used yet is undefined: no subnet, no bridge), or NotFoundError.
        Reads only: the catalog changes under the network lock alone (:meth:`_network`)."""
        entry = self.catalog.find_network(name) or (_undefined(name.lower()) if name.lower() in DEFAULT_NETWORKS
                                                    else None)
        if entry is None:
            raise NotFoundError(f"no network named {excerpt(name)}", hint="see the networks: minivisor net list")
        return entry

    def _network(self, name: str) -> NetworkEntry:
        """The network named, during :meth:`_turn`: a default one used for the first time enters the catalog now,
        with a free subnet and bridge (two processes defining it at once would pick the same ones)."""
        entry = self._known(name)
        if not entry.bridge:
            entry = self._define(entry.name, entry.mode, None, None, True)
            self.catalog.add_network(entry)
        return entry

    def _network_of(self, nic: Nic) -> NetworkEntry | None:
        """The network a NIC's specfile keys name, if it exists (a default one is defined now, under the lock)."""
        entry = self._network_named_by(nic)
        if entry is not None and not entry.bridge and self._support.available:
            with self._turn():
                return self._network(entry.name)
        return entry

    def _network_named_by(self, nic: Nic) -> NetworkEntry | None:
        """The network a NIC is on at its power-on, if any (a default one may be undefined); reads only."""
        return self._placement(nic).entry

    def _placement(self, nic: Nic) -> NicPlacement:
        return place_nic(nic, self._host_networks())

    def _host_networks(self) -> HostNetworks:
        """The networks NICs may join (the defaults included, maybe undefined), or why the host builds none."""
        host = self._support
        if not host.available:
            return HostNetworks(None, host.reason)
        return HostNetworks({entry.name.lower(): entry for entry in self._entries_with_defaults()})

    def reserved_addresses(self, ctx: VmContext) -> dict[str, str]:
        """NIC name -> the address reserved for its MAC on the network it is on (NICs without one are absent)."""
        reservations = {(r.network.lower(), r.mac): r.address for r in self.catalog.reservations_of(ctx.uuid)}
        found = {}
        for nic in ctx.read_spec().nics:
            entry = self._network_named_by(nic)
            address = reservations.get((entry.name.lower(), _mac(ctx, nic))) if entry else None
            if address:
                found[nic.name] = address
        return found

    def _vm_name(self, vm_uuid: str) -> str:
        entry = self.catalog.vm_by_uuid(vm_uuid)
        return entry.name if entry else vm_uuid

    def _info(self, entry: NetworkEntry, live: list[switch.TapOwner], host_links: dict[str, switch.Link]
              ) -> NetworkInfo:
        subnet = ipaddress.IPv4Network(entry.subnet) if entry.subnet else None
        if not self._support.available:
            state = "user-mode" if entry.name.lower() == "nat" else "unavailable"
        else:
            state = "active" if entry.bridge and entry.bridge in host_links else "inactive"
        pid = dhcp.running_pid(self._dhcp_files(entry.name)) if entry.dhcp and subnet else None
        vms = tuple(sorted({self._vm_name(o.vm_uuid) for o in live if o.network.lower() == entry.name.lower()}))
        return NetworkInfo(entry.name, entry.mode, str(subnet) if subnet else None,
                           str(addressing.host_interface(subnet).ip) if subnet else None, entry.dhcp,
                           entry.bridge or None, entry.uplink, state, pid, vms)


def _undefined(name: str) -> NetworkEntry:
    """A default network before its first use: in no catalog yet, so without subnet and bridge."""
    return NetworkEntry(name, DEFAULT_NETWORKS[name], None, True, "")


def _guarded_ports(host_links: dict[str, switch.Link], live: list[switch.TapOwner],
                   networks: dict[str, NetworkEntry]) -> list[antispoof.Port]:
    """The guard's view of the running VMs' taps on ``nat`` and isolated networks (a bridged network's taps are
    left to the LAN's rules): each tap's MAC, and which of its network's servers are the host's."""
    ports = []
    for tap, link in host_links.items():
        owner = switch.TapOwner.of(link)
        network = networks.get(owner.network.lower()) if owner in live else None
        if network is not None and network.mode != "bridged" and network.bridge in host_links:
            ports.append(antispoof.Port(tap, owner.mac, dhcp_by_host=network.dhcp and bool(network.subnet),
                                        routed_by_host=network.mode == "nat"))
    return ports


def _mac(ctx: VmContext, nic: Nic) -> str:
    return nic.mac or generated_mac(ctx.uuid, nic.index)


def _host_forward(forward: ForwardEntry) -> HostForward:
    protocol = "udp" if forward.protocol == "udp" else "tcp"
    return HostForward(protocol, forward.host_addr, forward.host_port, forward.guest_port)


def _forward_dict(forward: ForwardEntry, vm: str) -> dict:
    return {"vm": vm, "nic": f"ethernet{forward.nic}", "protocol": forward.protocol, "host_addr": forward.host_addr,
            "host_port": forward.host_port, "guest_port": forward.guest_port}
