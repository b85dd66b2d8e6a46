"""Hostile requests to a real `minivisor serve`: another Host, no token, NaN, huge bodies, huge values.

Each refusal is checked as an attacker would look at it: the status, what the
answer gives away, and that nothing changed in the datastore.
"""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from service.conftest import datastore, service, small_vm, vm1_service  # noqa: F401 - tests/service's fixtures

from minivisor import Hypervisor
from minivisor.service.app import MAX_BODY
from minivisor.service.auth import HostCheck

SECRET = "secretvm"


def request(service, method: str, path: str, body: bytes | None = None, *, host: str | None = None,
            token: str | None = "right", headers: dict | None = None) -> tuple[int, bytes, str]:
    """Status, body and every header line of one request sent exactly as given."""
    conn = http.client.HTTPConnection(service.client.host, service.client.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        if token is not None:
            conn.putheader("Authorization", f"Bearer {service.token if token == 'right' else token}")
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read(), str(response.headers)
    finally:
        conn.close()


def snapshot_of(service) -> tuple:
    """What a refused request must leave as it was: the VMs, their state, their event logs and specfiles, the
    files of their folders and of the datastore's top, and the names in the folder above the datastore (where
    the service's log grows)."""
    hv = Hypervisor(service.root)
    vms = [vm.to_dict() for vm in hv.list_vms()]
    logs = {vm["name"]: (service.root / vm["name"] / "events.jsonl").read_bytes() for vm in vms}
    specfiles = {vm["name"]: (service.root / vm["name"] / f"{vm['name']}.vmx").read_bytes() for vm in vms}
    files = {str(path.relative_to(service.root)): path.stat().st_size
             for folder in (service.root, *(service.root / vm["name"] for vm in vms))
             for path in folder.iterdir() if path.is_file()}
    return vms, logs, specfiles, files, sorted(path.name for path in service.root.parent.iterdir())


@pytest.fixture(scope="module")
def refusing_service(vm1_service):
    """The module's service over vm1's datastore, a file ``host-secret`` beside the datastore: shared by the tests
    of refused requests, each of which asserts that its request changed nothing (``snapshot_of``)."""
    (vm1_service.root.parent / "host-secret").write_text("the host's secret\n")
    return vm1_service


# -- Host: DNS rebinding ---------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1.evil.example:{port}",
                                  "127.0.0.1:{other}", "localhost:{other}", "localhost", "[::1]:{other}",
                                  "evil.example@127.0.0.1:{port}", "127.0.0.1:{port}/x", "127.0.0.1 :{port}"])
def test_a_request_for_another_host_is_refused_and_gets_no_data(service, host):
    hv = Hypervisor(service.root)
    small_vm(hv, SECRET)
    uuid = hv.get_vm(SECRET).uuid
    port = service.client.port
    host = host.format(port=port, other=port + 1 if port < 65535 else port - 1)
    before = snapshot_of(service)
    for method, path, body in (("GET", "/v1/vms", None), ("GET", f"/v1/vms/{SECRET}", None), ("GET", "/", None),
                               ("GET", "/metrics", None), ("GET", "/v1/events", None),
                               ("POST", f"/v1/vms/{SECRET}/start", b"{}"), ("DELETE", f"/v1/vms/{SECRET}", None)):
        status, data, headers = request(service, method, path, body, host=host)
        assert status in (400, 421), (method, path, status)  # 400: h11 refused the header's syntax itself
        if status == 421:
            assert json.loads(data)["error"]["code"] == "wrong-host"
        assert SECRET not in data.decode() and uuid not in data.decode() and "<html" not in data.decode()
    assert snapshot_of(service) == before


def test_a_request_without_a_host_is_refused(service):
    small_vm(Hypervisor(service.root), SECRET)
    with socket.create_connection((service.client.host, service.client.port), timeout=30) as sock:
        sock.sendall(f"GET /v1/vms HTTP/1.0\r\nAuthorization: Bearer {service.token}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 421 ") and SECRET.encode() not in answer


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}", "[::1]:{port}"])
def test_the_loopback_names_of_the_service_are_answered(service, host):
    small_vm(Hypervisor(service.root), SECRET)
    status, data, _ = request(service, "GET", "/v1/vms", host=host.format(port=service.client.port))
    assert status == 200 and [vm["name"] for vm in json.loads(data)] == [SECRET]


@pytest.mark.parametrize("listen, host, answered", [
    ("0.0.0.0", "192.0.2.7:8700", True),  # every address: any IP address, it cannot be rebound
    ("0.0.0.0", "[2001:db8::1]:8700", True),
    ("0.0.0.0", "localhost:8700", True),
    ("0.0.0.0", "evil.example:8700", False),
    ("0.0.0.0", "192.0.2.7:8701", False),
    ("::", "evil.example:8700", False),
    ("192.0.2.5", "192.0.2.5:8700", True),  # one address: that one only
    ("192.0.2.5", "127.0.0.1:8700", False),
    ("192.0.2.5", "localhost:8700", False),
    ("myhost.example", "MyHost.example:8700", True),  # a name given to --listen is the name to use
    ("myhost.example", "evil.example:8700", False),
    ("::1", "[::1]:8700", True),
    ("::1", "localhost:8700", True),
    ("127.0.0.1", "127.0.0.1", False),  # no port: 80
])
def test_which_hosts_a_service_answers_for(listen, host, answered):
    assert HostCheck(listen, 8700).allows(host) is answered


# -- 401 -----------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_a_401_does_not_reveal_where_the_datastore_is(service, token):
    for path in ("/v1/vms", "/v1/nothing", "/openapi.json"):
        status, data, headers = request(service, "GET", path, token=token)
        assert status == 401
        answer = data.decode() + headers
        top = f"/{service.root.parts[1]}/"  # /tmp/: no absolute path at all
        for secret in (str(service.root), str(service.root.parent), service.root.parent.name, top, service.token):
            assert secret not in answer, (secret, answer)
        assert json.loads(data)["error"]["code"] == "unauthorized"


# -- values ---------------------------------------------------------------------------
@pytest.mark.parametrize("path, body", [
    ("/v1/vms/vm1/start", b'{"wait_ready": true, "timeout": NaN}'),
    ("/v1/vms/vm1/start", b'{"wait_ready": true, "timeout": Infinity}'),
    ("/v1/vms/vm1/start", b'{"wait_ready": true, "timeout": -Infinity}'),
    ("/v1/vms/vm1/start", b'{"wait_ready": true, "timeout": 1e999}'),  # json reads it as Infinity
    ("/v1/vms/vm1/start", b'{"wait_ready": true, "timeout": -1}'),
    ("/v1/vms/vm1/wait-ready", b'{"timeout": NaN}'),
    ("/v1/vms/vm1/exec", b'{"command": "true", "timeout": -0.5}'),
    ("/v1/vms", b'{"name": "vm2", "disk_size": "16M", "memory_mib": -64}'),
])
def test_non_finite_or_negative_numbers_are_a_400_and_change_nothing(refusing_service, path, body):
    service = refusing_service
    before = snapshot_of(service)
    status, data, _ = request(service, "POST", path, body)
    error = json.loads(data)["error"]
    assert (status, error["code"]) == (400, "invalid-argument"), error
    assert snapshot_of(service) == before


@pytest.mark.parametrize("query", ["limit=NaN", "limit=-1", "limit=Infinity"])
def test_non_finite_or_negative_query_values_are_a_400(refusing_service, query):
    status, data, _ = request(refusing_service, "GET", f"/v1/vms/vm1/events?{query}")
    assert (status, json.loads(data)["error"]["code"]) in ((400, "invalid-argument"), (400, "bad-request"))


@pytest.mark.qemu
@pytest.mark.parametrize("body", [b'{"timeout": NaN}', b'{"hard": true, "timeout": -1}'])
def test_a_running_vm_is_not_touched_by_a_stop_with_a_bad_timeout(service, body):
    small_vm(Hypervisor(service.root), "vm1")
    pid = service.client.start_vm("vm1").vm.pid
    status, data, _ = request(service, "POST", "/v1/vms/vm1/stop", body)
    assert (status, json.loads(data)["error"]["code"]) == (400, "invalid-argument")
    vm = service.client.get_vm("vm1")
    assert (vm.state.value, vm.pid) == ("running", pid)


def test_oversized_bodies_are_a_413_and_change_nothing(service):
    small_vm(Hypervisor(service.root), "vm1")
    before = snapshot_of(service)
    padded = json.dumps({"name": "vm2", "disk_size": "16M", "guest_os": "x" * MAX_BODY}).encode()
    status, data, headers = request(service, "POST", "/v1/vms", padded)
    assert (status, json.loads(data)["error"]["code"]) == (413, "too-large")
    assert "connection: close" in headers.lower()  # the unread rest of the body cannot be taken for a request
    # a length far beyond the limit is refused from the head alone: the body is never sent
    conn = http.client.HTTPConnection(service.client.host, service.client.port, timeout=30)
    conn.putrequest("POST", "/v1/vms")
    conn.putheader("Authorization", f"Bearer {service.token}")
    conn.putheader("Content-Length", str(10**12))
    conn.endheaders()
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["error"]["code"]) == (413, "too-large")
    conn.close()
    # a chunked body declares no length: it is counted as it arrives
    conn = http.client.HTTPConnection(service.client.host, service.client.port, timeout=30)
    conn.request("POST", "/v1/vms", body=iter([padded[i:i + 4096] for i in range(0, len(padded), 4096)]),
                 headers={"Authorization": f"Bearer {service.token}", "Transfer-Encoding": "chunked"},
                 encode_chunked=True)
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["error"]["code"]) == (413, "too-large")
    conn.close()
    assert snapshot_of(service) == before


@pytest.mark.parametrize("path, body, status, code", [
    ("/v1/vms/vm1/start", {"x" * 20000: 1}, 400, "bad-request"),  # an unknown field named at length
    ("/v1/vms", {"name": "vm2", "disk_size": "16M", "guest_os": "x" * 5000}, 400, "invalid-argument"),
    ("/v1/vms", {"name": "n" * 3000, "disk_size": "16M"}, 422, "spec-invalid"),  # the core echoes the name
    ("/v1/vms/vm1/exec", {"command": ["true"] * 1000}, 400, "invalid-argument"),
    ("/v1/vms/" + "p" * 3000 + "/start", {}, 422, "spec-invalid"),
    ("/v1/vms/vm1/" + "q" * 3000, {}, 404, "route-not-found"),
])
def test_long_values_are_refused_and_not_echoed_whole(refusing_service, path, body, status, code):
    service = refusing_service
    before = snapshot_of(service)
    got, data, _ = request(service, "POST", path, json.dumps(body).encode())
    error = json.loads(data)["error"]
    assert (got, error["code"]) == (status, code), error
    assert len(error["message"]) <= 1000 and "x" * 100 not in error["message"]
    for long_value in ("x" * 1001, "n" * 1001, "p" * 1001, "q" * 1001):
        assert long_value not in data.decode()
    assert snapshot_of(service) == before


DEEP = b"[" * 30000 + b"]" * 30000  # under MAX_BODY, deeper than Python's JSON parser goes


@pytest.mark.parametrize("method, path, body, token, words", [
    ("POST", "/v1/vms", DEEP, "right", "too deeply"),
    ("POST", "/v1/vms", b'{"name": "vm2", "disk_size": "16M", "cpus": ' + b"[" * 3000 + b"]" * 3000 + b"}", "right",
     "too deeply"),
    ("POST", "/v1/session", DEEP, None, "too deeply"),  # before any token
    ("GET", "/v1/vms/vm1/events?limit=" + "[" * 3000 + "]" * 3000, None, "right", "too deeply"),
    ("POST", "/v1/session", b'{"token": "\\ud800"}', None, "not Unicode"),
    ("POST", "/v1/datastore/files/delete", b'{"folder": "vm1", "name": "\\ud800.iso"}', "right", "not Unicode"),
    ("GET", "/v1/vms/vm1/events?limit=%22%5Cud800%22", None, "right", "not Unicode"),
    ("POST", "/v1/vms", b'{"name": "vm2", "disk_size": "16M", "cpus": 1' + b"0" * 5000 + b"}", "right", "5001 digits"),
], ids=["deep-body", "deep-field", "deep-login", "deep-query", "surrogate-login", "surrogate-file-name",
        "surrogate-query", "long-integer"])
def test_json_python_cannot_hand_on_is_a_400_not_a_500(refusing_service, method, path, body, token, words):
    """Nesting deeper than Python's parser goes was a RecursionError, a lone surrogate escape (valid JSON) a
    UnicodeEncodeError where a file name or the token was encoded: each a 500, the login's before any token."""
    service = refusing_service
    before = snapshot_of(service)
    status, data, _ = request(service, method, path, body, token=token)
    error = json.loads(data)["error"]
    assert (status, error["code"]) == (400, "bad-request"), error
    assert words in error["message"] and "\n" not in error["message"] and "sys." not in error["message"]
    assert snapshot_of(service) == before
    assert request(service, "GET", "/v1/vms")[0] == 200


# -- the request models: each value of its type, shape and size, before anything runs -------------------------------
HOSTILE = [
    # fields the route does not have, among them the path's own parameter sent again in the body
    ("POST", "/v1/vms", {"name": "vm2", "disk_size": "16M", "qemu_args": ["-monitor", "stdio"]}, "bad-request"),
    ("POST", "/v1/vms/vm1/start", {"name": "vm2"}, "bad-request"),
    ("POST", "/v1/vms/vm1/snapshots", {"snapshot": "s", "__class__": {}}, "bad-request"),
    ("GET", "/v1/vms/vm1/events?limit=2&verbose=1", None, "bad-request"),
    # JSON of another type: no coercion ("64" is not 64, 1 is not true)
    ("POST", "/v1/vms", {"name": "vm2", "disk_size": "16M", "memory_mib": "64"}, "bad-request"),
    ("POST", "/v1/vms", {"name": "vm2", "disk_size": "16M", "cpus": True}, "bad-request"),
    ("POST", "/v1/vms", {"name": ["vm2"], "disk_size": "16M"}, "bad-request"),
    ("POST", "/v1/vms", {"name": "vm2", "disk_size": 16777216}, "bad-request"),
    ("PUT", "/v1/vms/vm1/autostart", {"enabled": 1}, "bad-request"),
    ("POST", "/v1/vms/vm1/snapshots", {"snapshot": None}, "bad-request"),
    ("POST", "/v1/vms/vm1/exec", {"command": {"argv": ["id"]}}, "bad-request"),
    ("POST", "/v1/vms/vm1/exec", {"command": ["id", 0]}, "bad-request"),
    ("GET", "/v1/vms/vm1/events?limit=%22all%22", None, "bad-request"),
    # out of the core's bounds, or longer than the field may be
    ("POST", "/v1/vms", {"name": "vm2", "disk_size": "16M", "cpus": 256}, "invalid-argument"),
    ("POST", "/v1/vms", {"name": "vm2", "disk_size": "16M", "memory_mib": 2**80}, "invalid-argument"),
    ("POST", "/v1/vms", {"name": "vm2", "disk_size": "9" * 33}, "invalid-argument"),
    ("POST", "/v1/vms", {"name": "vm2", "disk_size": "1P"}, "invalid-argument"),  # larger than minivisor creates
    ("POST", "/v1/vms/vm1/snapshots", {"snapshot": "s" * 129}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/snapshots", {"snapshot": "s", "description": "d" * 4097}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/copy-to", {"host_path": "vm1/vm1.vmx", "guest_path": "/" + "g" * 4095}, "invalid-argument"),
    ("PUT", "/v1/vms/vm1/specfile", {"text": "x", "stamp": "s" * 129}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/start", {"timeout": 86401}, "invalid-argument"),
    # paths that climb out of the datastore (the host's files are beside it), and control characters in them
    ("POST", "/v1/disks", {"path": "../evil.qcow2", "size": "1M"}, "path-unsafe"),
    ("POST", "/v1/disks/convert", {"source": "vm1/vm1.qcow2", "target": "vm1/../../evil.qcow2"}, "path-unsafe"),
    ("GET", "/v1/disks/info?path=%22../host-secret%22", None, "path-unsafe"),
    ("GET", "/v1/datastore/files?folder=..", None, "path-unsafe"),
    ("POST", "/v1/vms/vm1/cdrom", {"image": "../host-secret"}, "path-unsafe"),
    ("POST", "/v1/vms/register", {"vmx_path": "vm1/../../host-secret"}, "path-unsafe"),
    ("POST", "/v1/vms/vm1/copy-from", {"guest_path": "/etc/passwd", "host_path": "../stolen"}, "path-unsafe"),
    ("POST", "/v1/vms/import", {"folder": "..", "name": "vm2"}, "path-unsafe"),
    ("POST", "/v1/disks", {"path": "vm1/new\n.qcow2", "size": "1M"}, "invalid-argument"),
    # commas, quotes and newlines where they could reach QEMU's options or a specfile's lines
    ("POST", "/v1/vms/vm1/port-forwards", {"forward": "8080:22,hostfwd=tcp::2222-:22"}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/port-forwards", {"forward": "8080:22", "nic": "ethernet0,id=x"}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/nics", {"nic": "ethernet1\nethernet1.present = \"TRUE\""}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/nics", {"nic": "ethernet1", "network": "nat,script=/tmp/x"}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/nics", {"nic": "ethernet1", "model": "e1000,romfile=/etc/passwd"}, "invalid-argument"),
    ("POST", "/v1/vms", {"name": "vm2", "disk_size": "16M", "guest_os": 'x"\nmonitor.virtual_exec = "y'},
     "invalid-argument"),
    ("POST", "/v1/vms", {"name": "vm2", "disk_size": "16M", "firmware": "efi,readonly=off"}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/cdrom", {"image": None, "drive": "ide1:0,file=/etc/passwd"}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/disks/resize", {"node": "scsi0:0\n", "size": "32M"}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/snapshots", {"snapshot": "s\nsnapshot0.disk0.fileName = \"/etc/passwd\""},
     "invalid-argument"),
    ("POST", "/v1/networks", {"name": "lab", "mode": "bridged", "bridge": "eth0,x"}, "invalid-argument"),
    ("POST", "/v1/networks", {"name": "lab", "subnet": "10.0.0.0/24\n"}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/nics/ethernet0", {"address": "10.0.0.5,x"}, "invalid-argument"),
    ("POST", "/v1/vms/vm1/clone", {"target": "vm2,evil"}, "spec-invalid"),  # a VM's name, by the core's check
    ("POST", "/v1/vms/vm1/clone", {"target": "vm2\n"}, "spec-invalid"),
]


@pytest.mark.parametrize("method, path, body, code", HOSTILE,
                         ids=[f"{i}-{m} {p.split('?')[0]}" for i, (m, p, _, _) in enumerate(HOSTILE)])
def test_a_value_its_model_refuses_is_one_line_and_changes_nothing(refusing_service, method, path, body, code):
    service = refusing_service
    before = snapshot_of(service)
    status, data, _ = request(service, method, path, None if body is None else json.dumps(body).encode())
    error = json.loads(data)["error"]
    assert error["code"] == code and status in (400, 422), (status, error)
    for line in (error["message"], error["hint"] or ""):
        assert "\n" not in line and len(line) <= 1000 and "Traceback" not in line and "pydantic" not in line
    assert "the host's secret" not in data.decode()
    assert snapshot_of(service) == before
    assert not (service.root.parent / "evil.qcow2").exists() and not (service.root.parent / "stolen").exists()
