#!/usr/bin/env python3
"""Virtual networks: TCP throughput through minivisor's networks against the same QEMU netdevs set up by hand.

Everything runs inside a private network namespace this script creates (and deletes, with
every process in it, whatever happens); no packet leaves it. Needs root.

- guest -> guest on one network, and host -> guest through a port forward (127.0.0.1:PORT,
  DNAT in minivisor's nftables table), for virtio, vmxnet3 and e1000;
- next to the same: the VMM command lines minivisor builds (``vm explain``), started by hand on a
  bridge and taps made by hand as minivisor makes them, with static addresses, and a forward from
  127.0.0.1 written by hand as the same nftables rules. Both pairs run at once and take turns
  transfer by transfer, so what else the host does falls on both alike;
- the time from ``net create`` to a usable network (bridge up, dnsmasq serving), and from
  ``vm start`` to the guest's DHCP lease (read from dnsmasq's lease file).

The guests have busybox only: each transfer is ``dd if=/dev/zero | nc`` of a fixed number of bytes,
timed by the receiving guest from its first byte to the end (``/proc/uptime``, 10 ms steps).

    sudo python bench/net.py [--mib 16] [--runs 5] [--models virtio,vmxnet3,e1000]

Results and what they mean: docs/networks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from minivisor import Hypervisor  # noqa: E402
from minivisor.net.dhcp import dhcp_files, leases  # noqa: E402
from minivisor.vmm.console import run_command  # noqa: E402

from common import serving_itself  # noqa: E402

MODELS = ("virtio", "vmxnet3", "e1000")
PORT = 5001  # the receiving guest's nc
FORWARD, HAND_FORWARD = 18100, 18101  # the host's ports forwarded to it, by minivisor and by hand
SUBNET, HAND_SUBNET = "192.168.70", "192.168.71"
# nc's stdin never ends (busybox nc stops at its end): it is a sleep the receiver ends, by its PID, once it has
# the data; then the receiver hands its result to whoever reads the FIFO /tmp/rx. So the host waits for the result
# with one command that blocks (nothing polls the receiving guest during the transfer: under TCG each command it
# runs is CPU taken from the transfer).
RECEIVE = ("rm -f /tmp/rx; mkfifo /tmp/rx; (sh -c 'echo $$ >/tmp/rx.hold; exec sleep 900' | nc -l -p {port} | "
           "{{ dd bs=1 count=1 of=/dev/null 2>/dev/null; read a b </proc/uptime; n=$(wc -c); read c d </proc/uptime; "
           "kill $(cat /tmp/rx.hold); echo $a $c $n >/tmp/rx; }}) >/tmp/rx.err 2>&1 &")
RESULT = "cat /tmp/rx"
# a loaded TCG guest starts nc late; after 30 s what the receiver said is shown instead
LISTENING = ("i=0; while ! netstat -ltn 2>/dev/null | grep -q ':{port} '; do i=$((i+1)); "
             "if [ $i -gt 300 ]; then echo NOT-LISTENING; cat /tmp/rx.err; break; fi; sleep 0.1; done")
SEND = "dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc {addr} {port}"
# The rules minivisor's table has for a forward from 127.0.0.1 (net/firewall.py), written by hand.
HAND_FORWARD_RULES = """table inet byhand {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 127.0.0.1 tcp dport PORT dnat ip to GUEST
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tip daddr 127.0.0.1 tcp dport PORT dnat ip to GUEST
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "hbr0" ip saddr 127.0.0.0/8 masquerade
\t}
}
"""
HOST_SEND = """import socket, sys, time
deadline = time.monotonic() + 60
while True:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=600)
        break
    except ConnectionRefusedError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
block = bytes(65536)
for _ in range(int(sys.argv[3])):
    s.sendall(block)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):  # until the guest's nc has it all and closes: nothing else runs during the transfer
    pass
s.close()
"""


class Namespace:
    """A network namespace of the benchmark's own, and commands in it."""

    def __init__(self) -> None:
        self.name = f"mvbench-{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.sh("ip link set lo up")

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def sh(self, command: str) -> str:
        done = subprocess.run(self.argv("sh", "-c", command), capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{command!r}: {done.stderr.strip()}")
        return done.stdout

    def delete(self) -> None:
        """Every process in it stopped (QEMUs, dnsmasq), then the namespace."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), sig)
                except ProcessLookupError:
                    pass
            time.sleep(1.0 if pids else 0)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class Cli:
    """minivisor's CLI in the namespace, on one datastore."""

    def __init__(self, ns: Namespace, root: Path) -> None:
        self.ns, self.root = ns, root
        self.env = {k: v for k, v in os.environ.items() if k not in ("MINIVISOR_NETWORKING", "PYTHONDONTWRITEBYTECODE")}
        self.env["MINIVISOR_DIRECT"] = "1"

    def __call__(self, *args: str) -> str:
        done = subprocess.run(self.ns.argv(sys.executable, "-m", "minivisor", "-d", str(self.root), *args),
                              capture_output=True, text=True, env=self.env, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"minivisor {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def json(self, *args: str):
        return json.loads(self(*args, "--json"))


def wait_for_ready(serial: Path, timeout: float = 120.0) -> None:
    """Until the guest of a QEMU started by hand says it is ready on its serial socket (connected as soon as QEMU
    listens, before the guest boots: nothing it says is lost); then the socket is left for ``run_command``."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        while True:
            try:
                sock.connect(str(serial))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        seen = b""
        while b"minivisor-guest: ready" not in seen:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            if not (chunk := sock.recv(65536)):
                raise RuntimeError("the guest's console closed")
            seen = seen[-64:] + chunk


def shell_on(serial: Path):
    """Runs a command in the serial shell of a QEMU started by hand, the way ``vm exec`` runs one in minivisor's
    (the same ``run_command``, here on QEMU's own socket rather than the console relay's): both pairs are driven
    alike."""
    return lambda command: run_command(serial, command, 600).output


def throughput(receiver, send, address: str, port: int, mib: int) -> float:
    """MB/s (10^6 bytes) of one transfer, timed by the receiving guest (``receiver`` runs a command in it);
    ``send(address, port, blocks)`` sends from a guest or the host."""
    blocks = mib * 16
    for attempt in range(3):
        receiver(RECEIVE.format(port=PORT))
        if "NOT-LISTENING" not in (state := receiver(LISTENING.format(port=PORT))):
            break
        print(f"the receiving guest's nc did not listen (attempt {attempt + 1}): {' '.join(state.split())}",
              file=sys.stderr, flush=True)
    else:
        raise RuntimeError("the receiving guest's nc never listened")
    send(address, port, blocks)
    if not (result := re.search(r"(\d+\.\d+) (\d+\.\d+) (\d+)", receiver(RESULT))):
        state = receiver("netstat -tn; ps; cat /sys/class/net/eth0/statistics/rx_bytes")
        raise RuntimeError(f"the receiving guest did not finish within 120 s: {state}")
    first, last, count = float(result[1]), float(result[2]), int(result[3]) + 1
    if count != blocks * 65536:
        raise RuntimeError(f"the guest received {count} bytes, not {blocks * 65536}")
    return count / max(last - first, 0.01) / 1e6


@dataclass
class Pair:
    """Two running guests on one switch: g1 sends to g2 at ``g2_addr``; the host reaches g2 at ``forward``."""

    g1: Callable[[str], str]  # runs a shell command in g1, returns its output
    g2: Callable[[str], str]
    g2_addr: str
    forward: tuple[str, int]  # the host's address and port forwarded to g2's PORT


def guest_sender(run):
    """Sends with ``dd | nc`` in the guest whose shell ``run`` is."""
    return lambda address, port, blocks: run(SEND.format(blocks=blocks, addr=address, port=port))


def host_sender(ns: Namespace):
    def send(address: str, port: int, blocks: int) -> None:
        subprocess.run(ns.argv(sys.executable, "-c", HOST_SEND, address, str(port), str(blocks)), check=True,
                       timeout=600)
    return send


def measure(ns: Namespace, pairs: dict[str, Pair], mib: int, runs: int) -> dict[str, dict[str, float]]:
    """Per pair, medians of ``runs`` guest -> guest (``g2g``) and host -> guest through the forward (``h2g``)
    transfers. Both pairs run at once and take turns, transfer by transfer, the order swapped every run: what
    else the host does meanwhile (other work, the other pair's idle guests) falls on both alike."""
    samples = {who: {"g2g": [], "h2g": []} for who in pairs}
    for run in range(runs):
        for who in (list(pairs) if run % 2 == 0 else list(reversed(pairs))):
            pair = pairs[who]
            samples[who]["g2g"].append(throughput(pair.g2, guest_sender(pair.g1), pair.g2_addr, PORT, mib))
            samples[who]["h2g"].append(throughput(pair.g2, host_sender(ns), *pair.forward, mib))
    print(f"  MB/s of each transfer: {json.dumps(samples)}", flush=True)
    return {who: {case: statistics.median(values) for case, values in cases.items()} for who, cases in samples.items()}


@contextmanager
def minivisor_pair(cli: Cli, image: str, model: str) -> Iterator[tuple[Pair, float, dict[str, list[str]]]]:
    """Two VMs on the network ``bench``, g2 forwarded from the host's FORWARD; with the median time from
    ``vm start`` to the DHCP lease and each VMM's command line (``vm explain``). Stopped and deleted after,
    whatever happens."""
    hv = Hypervisor(cli.root)
    try:
        for vm in ("g1", "g2"):
            cli("vm", "create", vm, "--memory", "128", "--boot-disk", image, "--network", "bench", "--nic", model)
        to_lease = [start_to_lease(cli, hv, vm) for vm in ("g1", "g2")]
        for vm in ("g1", "g2"):
            hv.wait_ready(vm, timeout=120)
        (g2_nic,) = hv.vm_addresses("g2")
        cli("vm", "port-forward", "g2", "add", f"{FORWARD}:{PORT}")

        def on(vm):  # the serial shell, as the hand-made pair is driven (not the guest agent)
            return lambda command: hv.exec_in_vm(vm, command, timeout=600, via="serial").output

        argv = {vm: cli.json("vm", "explain", vm)["argv"] for vm in ("g1", "g2")}
        yield Pair(on("g1"), on("g2"), g2_nic["address"], ("127.0.0.1", FORWARD)), statistics.median(to_lease), argv
    finally:
        for vm in ("g1", "g2"):
            for args in (("vm", "stop", vm, "--hard"), ("vm", "delete", vm)):
                try:
                    cli(*args)
                except RuntimeError:
                    pass  # not made, or not running: nothing to undo


def start_to_lease(cli: Cli, hv: Hypervisor, vm: str) -> float:
    """Seconds from ``vm start`` to dnsmasq's lease of the VM's reserved address (made at power-on) to its MAC:
    the address the benchmark connects to (a lease of another address would be a guest nobody reaches)."""
    files = dhcp_files(cli.root / ".minivisor", "bench")
    start = time.monotonic()
    cli("vm", "start", vm)
    (nic,) = hv.vm_addresses(vm)
    while (leased := leases(files).get(nic["mac"])) != nic["address"]:
        if time.monotonic() - start > 120:
            raise RuntimeError(f"{vm} has no lease of its reserved address {nic['address']} (its lease: {leased})")
        time.sleep(0.02)
    return time.monotonic() - start


@contextmanager
def by_hand_pair(ns: Namespace, workdir: Path, image: str, argv: dict[str, list[str]]) -> Iterator[Pair]:
    """minivisor's own command lines, started by hand on a bridge and taps made by hand as minivisor makes them
    (static addresses, no dnsmasq), g2 forwarded from the host's HAND_FORWARD by an nftables table written by
    hand with the rules minivisor's has for a forward. Everything ended and removed after."""
    ns.sh(f"ip link add hbr0 type bridge stp_state 0 forward_delay 0 && ip addr add {HAND_SUBNET}.1/24 dev hbr0 "
          "&& ip link set hbr0 up")
    processes = []
    try:
        shells = {}
        for number, vm in enumerate(("g1", "g2"), start=2):
            tap = f"htap{number}"
            ns.sh(f"ip tuntap add dev {tap} mode tap vnet_hdr && ip link set {tap} master hbr0 up")
            disk = workdir / f"hand-{vm}.qcow2"
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", image, str(disk)], check=True)
            own = workdir / f"hand-{vm}"
            own.mkdir(mode=0o700)
            command = _by_hand(argv[vm], tap, disk, own)
            processes.append(subprocess.Popen(ns.argv(*command), stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            serial = next(Path(m[1]) for arg in command if (m := re.match(r"socket,id=console,path=([^,]+)", arg)))
            wait_for_ready(serial)
            shells[vm] = shell_on(serial)
            shells[vm](f"killall udhcpc; ip addr flush dev eth0; ip addr add {HAND_SUBNET}.{number}/24 dev eth0")
        g2 = f"{HAND_SUBNET}.3"
        reach = shells["g1"](f"ping -c 3 -W 2 {g2}; ip addr; cat /sys/class/net/eth0/carrier")
        if " 0% packet loss" not in reach:
            raise RuntimeError(f"by hand, g1 does not reach g2: {reach}")
        ns.sh("sysctl -qw net.ipv4.conf.hbr0.route_localnet=1")  # as minivisor sets it on its bridges
        rules = HAND_FORWARD_RULES.replace("PORT", str(HAND_FORWARD)).replace("GUEST", f"{g2}:{PORT}")
        subprocess.run(ns.argv("nft", "-f", "-"), input=rules, text=True, check=True)
        yield Pair(shells["g1"], shells["g2"], g2, ("127.0.0.1", HAND_FORWARD))
    finally:
        for process in processes:
            process.kill()
            process.wait()
        ns.sh("nft delete table inet byhand; ip link del hbr0; ip link del htap2; ip link del htap3; true")
        for vm in ("g1", "g2"):
            shutil.rmtree(workdir / f"hand-{vm}", ignore_errors=True)


def _by_hand(argv: list[str], tap: str, disk: Path, own: Path) -> list[str]:
    """minivisor's argv, running at once (no -S), its tap and disk replaced, and every file it names (sockets:
    console, QMP, events, VNC, served by QEMU itself; the BIOS log) one of its own in the folder ``own``: minivisor's VM runs meanwhile,
    and two QEMUs binding one socket path would leave minivisor talking to the wrong one."""
    out = []
    for arg in argv:
        if arg == "-S":
            continue
        if arg.startswith("{") and '"type":"tap"' in arg:
            arg = json.dumps({**json.loads(arg), "ifname": tap}, separators=(",", ":"))
        elif arg.startswith("{") and '"driver":"file"' in arg:
            arg = json.dumps({**json.loads(arg), "filename": str(disk)}, separators=(",", ":"))
        else:
            arg = re.sub(r"(path=|^unix:)(/[^,]+)", lambda m: f"{m[1]}{own / Path(m[2]).name}", arg)
            arg = serving_itself(arg)  # no relay: QEMU serves its console and events
        out.append(arg)
    return out


def time_net_create(cli: Cli, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        cli("net", "create", "probe", "--subnet", "192.168.72.0/24")
        times.append(time.monotonic() - start)
        info = cli.json("net", "show", "probe")
        if info["state"] != "active" or not info["dhcp_pid"]:
            raise RuntimeError(f"net create returned before the network was usable: {info}")
        cli("net", "delete", "probe")
    return statistics.median(times)


def model_run(ns: Namespace, cli: Cli, workdir: Path, image: str, model: str, mib: int,
              runs: int) -> tuple[dict[str, float], dict[str, float], float]:
    """minivisor's pair and the same by hand, measured side by side; and minivisor's start -> lease."""
    with minivisor_pair(cli, image, model) as (ours, lease, argv), by_hand_pair(ns, workdir, image, argv) as hand:
        measured = measure(ns, {"minivisor": ours, "by hand": hand}, mib, runs)
    return measured["minivisor"], measured["by hand"], lease


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16, help="MiB per transfer [16]")
    parser.add_argument("--runs", type=int, default=5, help="transfers per case, median [5]")
    parser.add_argument("--models", default=",".join(MODELS), help=f"NIC models [{','.join(MODELS)}]")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/net.py needs root (a network namespace, bridges, taps)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/net.py: terminated"))  # the cleanup below still runs
    workdir = Path(tempfile.mkdtemp(prefix="minivisor-bench-net-"))
    ns = Namespace()
    try:
        cli = Cli(ns, workdir / "ds")
        image = cli("image", "build", "appliance").strip()
        cli("datastore", "allow-path", str(Path(image).parent))
        print(f"net create -> usable network (bridge up, dnsmasq serving), median of 3: "
              f"{time_net_create(cli, 3):.3f} s", flush=True)
        cli("net", "create", "bench", "--subnet", f"{SUBNET}.0/24")
        rows, failed = [], {}
        for model in options.models.split(","):
            try:  # one model failing (a guest driver, a stall) still leaves the others measured
                rows.append((model, *model_run(ns, cli, workdir, image, model, options.mib, options.runs)))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                traceback.print_exc()
                failed[model] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                print(f"{model}: FAILED: {failed[model]}", flush=True)
                continue
            print(f"{model}: done", flush=True)
        print(f"\n{options.mib} MiB per transfer, median of {options.runs} (minivisor and by hand taking turns); "
              "MB/s; target ratio >= 0.95")
        print(f"{'model':<8} {'g->g':>8} {'by hand':>8} {'ratio':>6}   {'h->g fwd':>8} {'by hand':>8} {'ratio':>6}"
              f"   {'start->lease':>12}")
        for model, ours, hand, lease in rows:
            print(f"{model:<8} {ours['g2g']:>8.1f} {hand['g2g']:>8.1f} {ours['g2g'] / hand['g2g']:>6.3f}   "
                  f"{ours['h2g']:>8.1f} {hand['h2g']:>8.1f} {ours['h2g'] / hand['h2g']:>6.3f}   {lease:>11.2f}s")
        for model, why in failed.items():
            print(f"{model:<8} FAILED: {why}")
    finally:
        ns.delete()  # every QEMU and dnsmasq in it ends with it
        shutil.rmtree(workdir, ignore_errors=True)
        for network in ("bench", "probe"):  # dnsmasq's folders outside the namespace
            shutil.rmtree(dhcp_files(workdir / "ds" / ".minivisor", network).runtime, ignore_errors=True)


if __name__ == "__main__":
    main()
