#!/usr/bin/env python3
"""Virtual networks: TCP throughput through minivisor's networks against the same QEMU netdevs set up by hand.

Everything runs inside a private network namespace this script creates (and deletes, with
every process in it, whatever happens); no packet leaves it. Needs root.

- guest -> guest on one network, and host -> guest through a port forward (127.0.0.1:PORT,
  DNAT in minivisor's nftables table), for virtio, vmxnet3 and e1000;
- next to the same: the VMM command line minivisor builds (``vm explain``), started by hand on a
  bridge and taps made by hand with static addresses; host -> guest goes straight to the guest's
  address there (no NAT), so that ratio also shows what the forward's DNAT costs;
- the time from ``net create`` to a usable network (bridge up, dnsmasq serving), and from
  ``vm start`` to the guest's DHCP lease (read from dnsmasq's lease file).

The guests have busybox only: each transfer is ``dd if=/dev/zero | nc`` of a fixed number of bytes,
timed by the receiving guest from its first byte to the end (``/proc/uptime``, 10 ms steps).

    sudo python bench/net.py [--mib 32] [--runs 3]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from minivisor import Hypervisor  # noqa: E402
from minivisor.net.dhcp import dhcp_files  # noqa: E402

MODELS = ("virtio", "vmxnet3", "e1000")
PORT = 5001  # the receiving guest's nc
FORWARD = 18100  # the host's port forwarded to it
SUBNET, HAND_SUBNET = "192.168.70", "192.168.71"
# nc's stdin never ends (busybox nc stops at its end); the receiver ends that sleep once it has the data.
RECEIVE = ("rm -f /tmp/rx; (sleep 900 | nc -l -p {port} | {{ dd bs=1 count=1 of=/dev/null 2>/dev/null; "
           "read a b </proc/uptime; n=$(wc -c); read c d </proc/uptime; echo $a $c $n >/tmp/rx; killall sleep; }}) "
           ">/dev/null 2>&1 &")
LISTENING = "while ! netstat -ltn | grep -q ':{port} '; do sleep 0.1; done"  # a loaded TCG guest starts nc late
SEND = "dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc {addr} {port}"
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


class SerialShell:
    """The appliance's root shell on the serial socket of a QEMU started by hand (no console relay)."""

    def __init__(self, path: Path, timeout: float = 120.0) -> None:
        """Connect as soon as QEMU listens (before the guest boots: nothing it says is lost), wait for ready."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self._read_until(re.compile(rb"minivisor-guest: ready"), deadline)
        self.run("stty -echo")  # what is typed is not said back: the output is the command's own

    def run(self, command: str, timeout: float = 300.0) -> str:
        marker = secrets.token_hex(4)
        self.sock.sendall(f"{command}\necho @{marker}@$?@\n".encode())  # a line each: the command may end in &
        return self._read_until(re.compile(rf"@{marker}@(\d+)@".encode()), time.monotonic() + timeout)

    def _read_until(self, pattern: re.Pattern[bytes], deadline: float) -> str:
        seen = b""
        while not (found := pattern.search(seen)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"the guest never said {pattern.pattern!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the guest's console closed")
            seen += chunk
        return seen[:found.start()].decode(errors="replace").replace("\r", "")


def throughput(receiver, send, address: str, port: int, mib: int) -> float:
    """MB/s (10^6 bytes) of one transfer, timed by the receiving guest (``receiver`` runs a command in it);
    ``send(address, port, blocks)`` sends from a guest or the host."""
    blocks = mib * 16
    receiver(RECEIVE.format(port=PORT))
    receiver(LISTENING.format(port=PORT))
    send(address, port, blocks)
    deadline = time.monotonic() + 120
    while not (result := re.search(r"(\d+\.\d+) (\d+\.\d+) (\d+)", receiver("cat /tmp/rx 2>/dev/null"))):
        if time.monotonic() > deadline:
            state = receiver("netstat -tn; ps; cat /sys/class/net/eth0/statistics/rx_bytes")
            raise RuntimeError(f"the receiving guest never finished: {state}")
        time.sleep(0.2)
    first, last, count = float(result[1]), float(result[2]), int(result[3]) + 1
    if count != blocks * 65536:
        raise RuntimeError(f"the guest received {count} bytes, not {blocks * 65536}")
    return count / max(last - first, 0.01) / 1e6


def guest_sender(run):
    """Sends with ``dd | nc`` in the guest whose shell ``run`` is."""
    return lambda address, port, blocks: run(SEND.format(blocks=blocks, addr=address, port=port))


def measure(receive, send_guest, guest_addr: str, host_send, host_addr: str, host_port: int,
            mib: int, runs: int) -> tuple[float, float]:
    """Medians of ``runs`` guest -> guest and host -> guest transfers."""
    g2g = [throughput(receive, send_guest, guest_addr, PORT, mib) for _ in range(runs)]
    h2g = [throughput(receive, host_send, host_addr, host_port, mib) for _ in range(runs)]
    return statistics.median(g2g), statistics.median(h2g)


def host_sender(ns: Namespace):
    def send(address: str, port: int, blocks: int) -> None:
        subprocess.run(ns.argv(sys.executable, "-c", HOST_SEND, address, str(port), str(blocks)), check=True,
                       timeout=600)
    return send


def minivisor_run(ns: Namespace, cli: Cli, image: str, model: str, mib: int, runs: int) -> dict:
    hv = Hypervisor(cli.root)
    for vm in ("g1", "g2"):
        cli("vm", "create", vm, "--memory", "128", "--boot-disk", image, "--network", "bench", "--nic", model)
    leases = cli.root / ".minivisor" / "net" / "bench" / "leases"
    to_lease = []
    for vm in ("g1", "g2"):
        mac = cli.json("vm", "show", vm)["nics"][0]["mac"]
        start = time.monotonic()
        cli("vm", "start", vm)
        while mac not in (leases.read_text() if leases.exists() else ""):
            if time.monotonic() - start > 120:
                raise RuntimeError(f"{vm} got no DHCP lease")
            time.sleep(0.02)
        to_lease.append(time.monotonic() - start)
    for vm in ("g1", "g2"):
        hv.wait_ready(vm, timeout=120)
    g2_addr = {n["nic"]: n["address"] for n in cli.json("vm", "ip", "g2")}["ethernet0"]
    cli("vm", "port-forward", "g2", "add", f"{FORWARD}:{PORT}")

    def on(vm):
        return lambda command: hv.exec_in_vm(vm, command, timeout=600).output

    g2g, h2g = measure(on("g2"), guest_sender(on("g1")), g2_addr, host_sender(ns), "127.0.0.1", FORWARD, mib, runs)
    argv = {vm: cli.json("vm", "explain", vm)["argv"] for vm in ("g1", "g2")}
    for vm in ("g1", "g2"):
        cli("vm", "stop", vm, "--hard")
        cli("vm", "delete", vm)
    return {"g2g": g2g, "h2g": h2g, "lease": statistics.median(to_lease), "argv": argv}


def by_hand_run(ns: Namespace, workdir: Path, image: str, argv: dict[str, list[str]], mib: int, runs: int) -> dict:
    """minivisor's own command lines, started by hand on a bridge and taps made by hand (static addresses)."""
    ns.sh(f"ip link add hbr0 type bridge && ip addr add {HAND_SUBNET}.1/24 dev hbr0 && ip link set hbr0 up")
    processes, shells, made = [], {}, set()
    try:
        for number, vm in enumerate(("g1", "g2"), start=2):
            tap = f"htap{number}"
            ns.sh(f"ip tuntap add dev {tap} mode tap vnet_hdr && ip link set {tap} master hbr0 up")
            disk = workdir / f"hand-{vm}.qcow2"
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", image, str(disk)], check=True)
            command = _by_hand(argv[vm], tap, disk, workdir / f"{vm}.serial", made)
            processes.append(subprocess.Popen(ns.argv(*command), stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            shells[vm] = SerialShell(workdir / f"{vm}.serial")
            shells[vm].run(f"killall udhcpc; ip addr flush dev eth0; ip addr add {HAND_SUBNET}.{number}/24 dev eth0")
        g2 = f"{HAND_SUBNET}.3"
        reach = shells["g1"].run(f"ping -c 3 -W 2 {g2}; ip addr; cat /sys/class/net/eth0/carrier")
        if " 0% packet loss" not in reach:
            raise RuntimeError(f"by hand, g1 does not reach g2: {reach}")
        return dict(zip(("g2g", "h2g"), measure(shells["g2"].run, guest_sender(shells["g1"].run), g2, host_sender(ns),
                                                g2, PORT, mib, runs)))
    finally:
        for process in processes:
            process.kill()
            process.wait()
        ns.sh("ip link del hbr0; ip link del htap2; ip link del htap3; true")
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


def _by_hand(argv: list[str], tap: str, disk: Path, serial: Path, made: set[Path]) -> list[str]:
    """minivisor's argv, running at once (no -S), its tap and disk replaced, its console a socket of ours."""
    out = []
    for arg in argv:
        if arg == "-S":
            continue
        if arg.startswith("{") and '"type":"tap"' in arg:
            arg = json.dumps({**json.loads(arg), "ifname": tap}, separators=(",", ":"))
        elif arg.startswith("{") and '"driver":"file"' in arg:
            arg = json.dumps({**json.loads(arg), "filename": str(disk)}, separators=(",", ":"))
        elif arg.startswith("socket,id=console,"):
            arg = f"socket,id=console,path={serial},server=on,wait=off"
        for match in re.finditer(r"path=([^,]+)", arg):
            folder = Path(match.group(1)).parent
            if not folder.exists():  # the socket folder minivisor makes (and removes) for each power-on
                folder.mkdir(mode=0o700, parents=True)
                made.add(folder)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32, help="MiB per transfer [32]")
    parser.add_argument("--runs", type=int, default=3, help="transfers per case, median [3]")
    parser.add_argument("--models", default=",".join(MODELS), help=f"NIC models [{','.join(MODELS)}]")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/net.py needs root (a network namespace, bridges, taps)")
    workdir = Path(tempfile.mkdtemp(prefix="minivisor-bench-net-"))
    ns = Namespace()
    try:
        cli = Cli(ns, workdir / "ds")
        image = cli("image", "build", "appliance").strip()
        cli("datastore", "allow-path", str(Path(image).parent))
        print(f"net create -> usable network (bridge up, dnsmasq serving), median of 3: "
              f"{time_net_create(cli, 3):.3f} s", flush=True)
        cli("net", "create", "bench", "--subnet", f"{SUBNET}.0/24")
        rows = []
        for model in options.models.split(","):
            ours = minivisor_run(ns, cli, image, model, options.mib, options.runs)
            hand = by_hand_run(ns, workdir, image, ours["argv"], options.mib, options.runs)
            rows.append((model, ours, hand))
            print(f"{model}: guest->guest {ours['g2g']:.1f} MB/s (by hand {hand['g2g']:.1f}, ratio "
                  f"{ours['g2g'] / hand['g2g']:.3f}); host->guest via forward {ours['h2g']:.1f} MB/s (by hand, "
                  f"direct {hand['h2g']:.1f}, ratio {ours['h2g'] / hand['h2g']:.3f}); vm start -> DHCP lease "
                  f"{ours['lease']:.2f} s", flush=True)
        print(f"\n{options.mib} MiB per transfer, median of {options.runs}; target ratio >= 0.95")
        print(f"{'model':<8} {'g->g':>8} {'by hand':>8} {'ratio':>6}   {'h->g fwd':>8} {'by hand':>8} {'ratio':>6}"
              f"   {'start->lease':>12}")
        for model, ours, hand in rows:
            print(f"{model:<8} {ours['g2g']:>8.1f} {hand['g2g']:>8.1f} {ours['g2g'] / hand['g2g']:>6.3f}   "
                  f"{ours['h2g']:>8.1f} {hand['h2g']:>8.1f} {ours['h2g'] / hand['h2g']:>6.3f}   {ours['lease']:>11.2f}s")
    finally:
        ns.delete()  # every QEMU and dnsmasq in it ends with it
        shutil.rmtree(workdir, ignore_errors=True)
        for network in ("bench", "probe"):  # dnsmasq's folders outside the namespace
            shutil.rmtree(dhcp_files(workdir / "ds" / ".minivisor", network).runtime, ignore_errors=True)


if __name__ == "__main__":
    main()
