"""Virtual networks on the host, built from real parts the way libvirt builds them.

A network is a virtual switch: a Linux bridge (:mod:`.switch`), a tap per NIC
plugged into it before the VMM starts, a dnsmasq bound to that bridge alone for
DHCP (reservations in a hosts file re-read on SIGHUP; :mod:`.dhcp`), and rules in
the one nftables table minivisor owns (``inet minivisor``), loaded atomically
(masquerade for NAT networks, DNAT for port forwards, isolation between switches;
:mod:`.firewall`), and beside it ``bridge minivisor``, which lets a guest send only as
its own NIC's MAC (:mod:`.antispoof`). :mod:`.names` maps what a specfile says (``connectionType``,
``vnet``, ``networkName``) to a network and names the host's interfaces;
:mod:`.addressing` chooses subnets and addresses; :mod:`.forwards` parses port
forwards and finds who holds a port. :mod:`.host` says whether this host can do it.

Nothing here knows the catalog or a VM's life: :mod:`minivisor.core.networks`
decides what should exist and calls these modules, which only run ``ip``,
``nft`` and ``dnsmasq`` (argv lists, never a shell) and touch nothing outside
minivisor's own bridges, taps, tables and dnsmasq processes.
"""
