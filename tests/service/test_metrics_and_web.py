"""Metrics (JSON and Prometheus)."""

from __future__ import annotations

import http.client
import re
import time

import pytest

from minivisor import Hypervisor

from .conftest import small_vm

pytestmark = pytest.mark.qemu  # each test powers a VM on (SeaBIOS, nothing to boot)


def get(service, path: str, token: str | None = None):
    conn = http.client.HTTPConnection(service.client.host, service.client.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def test_metrics_report_each_running_vm_and_the_host(service):
    small_vm(Hypervisor(service.root), "vm1")
    small_vm(Hypervisor(service.root), "off")
    pid = service.client.start_vm("vm1").vm.pid
    deadline = time.monotonic() + 20
    while True:  # SeaBIOS reads the empty disk's first sector while looking for something to boot
        vm = service.client.metrics()["vms"]["vm1"]
        if sum(d["read_ops"] for d in vm.get("disks", {}).values()) > 0:
            break
        assert time.monotonic() < deadline, vm
        time.sleep(0.1)
    data = service.client.metrics()
    assert set(data["vms"]) == {"vm1"}  # powered-off VMs have no VMM to measure
    vm = data["vms"]["vm1"]
    assert vm["pid"] == pid and vm["cpu_seconds"] > 0 and vm["memory_rss_bytes"] > 1024 * 1024
    assert vm["vmm_io"]["rchar"] > 0
    host = data["host"]
    assert host["vms_running"] == 1 and host["memory_total_bytes"] > host["memory_available_bytes"] > 0
    assert host["vm_memory_rss_bytes"] == vm["memory_rss_bytes"]


def test_prometheus_text_format(service):
    small_vm(Hypervisor(service.root), "vm1")
    service.client.start_vm("vm1")
    status, kind, body = get(service, "/metrics", service.token)
    assert status == 200 and kind.startswith("text/plain; version=0.0.4")
    text = body.decode()
    sample = re.compile(r'^[a-z_]+(\{[a-z]+="[^"]*"(,[a-z]+="[^"]*")*\})? -?[0-9.e+]+$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    rss = re.search(r'^minivisor_vm_memory_rss_bytes\{vm="vm1"\} (\d+)$', text, re.M)
    assert rss and int(rss.group(1)) > 0
    assert re.search(r'^minivisor_vm_disk_read_bytes_total\{vm="vm1",disk="[^"]+"\} \d+$', text, re.M)
    assert "minivisor_vms_running 1" in text
