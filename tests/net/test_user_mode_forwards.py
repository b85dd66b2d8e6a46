"""Port forwards where minivisor builds no networks (MINIVISOR_NETWORKING=user, or not root): QEMU's user-mode
NAT listens for them (``hostfwd``), from power-on and, on a running VM, at once.

minivisor and the VM run in a network namespace of the test's own; the forwards are
on its loopback, and the server is a busybox httpd in the guest.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from netlab import end_lab, make_lab

from minivisor import Hypervisor

pytestmark = pytest.mark.qemu

FETCH = ("python3 -c \"import sys, urllib.request as u; "
         "print(u.urlopen('http://127.0.0.1:' + sys.argv[1] + '/', timeout=5).read().decode())\" {port}")
# Something of the user's own that listens on a port (on the lab's loopback), and says so.
SQUAT = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); "
         "print('listening', flush=True); time.sleep(120)")


@pytest.fixture
def user_lab(tmp_path, appliance_image):
    lab = make_lab(tmp_path / "datastore", user_mode=True)
    try:
        lab.mv("datastore", "allow-path", str(appliance_image.parent))
        yield lab, appliance_image
    finally:
        end_lab(lab)


def fetch(lab, port: int, timeout: float = 30.0) -> str:
    """What the guest's httpd serves through the host's port (the guest takes slirp's DHCP address after boot)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return lab.sh(FETCH.format(port=port)).strip()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_forwards_reach_httpd_in_a_user_mode_guest_from_power_on_and_at_once_on_a_running_vm(user_lab):
    lab, image = user_lab
    assert "user-mode" in lab.mv_json("host", "info")["networking"]
    lab.mv("vm", "create", "u", "--memory", "96", "--boot-disk", str(image), "--network", "nat")
    lab.mv("vm", "port-forward", "u", "add", "18080:80")
    argv = lab.mv_json("vm", "explain", "u")["argv"]
    netdev = json.loads(argv[argv.index("-netdev") + 1])
    assert netdev == {"type": "user", "id": "net0", "hostfwd": [{"str": "tcp:127.0.0.1:18080-:80"}]}
    lab.mv("vm", "start", "u", "--wait-ready")
    hv = Hypervisor(lab.datastore)
    hv.exec_in_vm("u", "mkdir -p /www && echo served-by-u >/www/index.html && httpd -p 80 -h /www")
    assert fetch(lab, 18080) == "served-by-u"

    lab.mv("vm", "port-forward", "u", "add", "18081:80")  # a running VM: no restart
    assert fetch(lab, 18081, timeout=5) == "served-by-u"
    lab.mv("vm", "port-forward", "u", "remove", "18080")
    assert lab.sh(FETCH.format(port=18080), check=False) == ""  # nothing listens there any more
    assert [f["host_port"] for f in lab.mv_json("vm", "port-forward", "u", "list")] == [18081]
    assert lab.api("nic_traffic", "u") == {}  # user-mode NAT has no tap: no counters, not zeros

    taken = lab.mv("vm", "port-forward", "u", "add", "18081:22", check=False)
    assert taken.returncode == 4 and "already forwarded to VM 'u'" in taken.stderr
    lab.mv("vm", "stop", "u", "--hard")
    lab.mv("vm", "start", "u", "--wait-ready")  # the forward is kept with the VM
    hv.exec_in_vm("u", "mkdir -p /www && echo again >/www/index.html && httpd -p 80 -h /www")
    assert fetch(lab, 18081) == "again"
    lab.mv("vm", "stop", "u", "--hard")


def test_a_forwarded_port_taken_after_it_was_added_refuses_the_power_on_in_words(user_lab):
    lab, image = user_lab
    lab.mv("vm", "create", "u", "--memory", "96", "--boot-disk", str(image), "--network", "nat")
    lab.mv("vm", "port-forward", "u", "add", "18090:80")
    squatter = subprocess.Popen(["ip", "netns", "exec", lab.host, "python3", "-c", SQUAT, "18090"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout.readline().strip() == "listening"
        done = lab.mv("vm", "start", "u", check=False)
        assert done.returncode == 4, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error: port 127.0.0.1:18090/tcp of this host, forwarded to u's ethernet0 port 80, "
                               f"is taken by python3 (pid {squatter.pid})"), line
        assert lab.mv_json("vm", "show", "u")["state"] == "poweredOff"
    finally:
        squatter.kill()
        squatter.wait()
    lab.mv("vm", "start", "u")  # the port free again: the forward works as added
    lab.mv("vm", "stop", "u", "--hard")
