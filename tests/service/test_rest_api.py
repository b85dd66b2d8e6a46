"""The REST API over a real service process: auth, limits, errors, OpenAPI, CLI parity."""

from __future__ import annotations

import http.client
import json
import select
import stat
from pathlib import Path
from urllib.parse import quote

import pytest

from minivisor import Hypervisor
from minivisor.errors import NotFoundError, StateError
from minivisor.service.models import REQUESTS, ErrorAnswer, answer
from minivisor.service.routes import OPERATIONS, by_name
from minivisor.service.app import MAX_BODY
from minivisor.service.connections import KEEP_ALIVE

from .conftest import Running, small_vm


def raw(service, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection(service.client.host, service.client.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data and data[:1] in b"{[" else data)
    finally:
        conn.close()


def auth(service) -> dict:
    return {"Authorization": f"Bearer {service.token}", "Content-Type": "application/json"}


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as the kernel lists them) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_token_is_private_and_the_service_binds_loopback_only(service):
    token = service.root / ".minivisor" / "token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE((service.root / ".minivisor" / "service.json").stat().st_mode) == 0o600
    assert listening_addresses(service.client.port) == {"0100007F"}  # 127.0.0.1, and no other address


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"},
                                     {"Authorization": "Bearer "}])
def test_requests_without_the_right_token_get_401_and_change_nothing(service, headers):
    hv = Hypervisor(service.root)
    small_vm(hv, "vm1")
    before = [vm.to_dict() for vm in hv.list_vms()]
    for method, path, body in (("POST", "/v1/vms/vm1/start", b"{}"), ("DELETE", "/v1/vms/vm1", None),
                               ("POST", "/v1/vms", b'{"name": "new", "disk_size": "16M"}'),
                               ("GET", "/v1/vms", None), ("GET", "/v1/events", None), ("GET", "/metrics", None),
                               ("GET", "/openapi.json", None), ("GET", "/v1/nothing-here", None)):
        status, data = raw(service, method, path, body, headers)
        assert status == 401, (method, path, status)
        assert data["error"]["code"] == "unauthorized"
    assert [vm.to_dict() for vm in hv.list_vms()] == before


def test_oversized_bodies_get_413(service):
    small_vm(Hypervisor(service.root), "vm1")
    body = json.dumps({"hard": True, "pad": "x" * MAX_BODY}).encode()
    status, data = raw(service, "POST", "/v1/vms/vm1/stop", body, auth(service))
    assert status == 413 and data["error"]["code"] == "too-large"


@pytest.mark.parametrize("path, body, status, code", [
    ("/v1/vms/vm1/start", b'{"wait_ready": false, "evil": 1}', 400, "bad-request"),  # unknown field
    ("/v1/vms/vm1/start", b'{"timeout": "soon"}', 400, "bad-request"),  # wrong type
    ("/v1/vms/vm1/start", b"[1, 2]", 400, "bad-request"),  # not an object
    ("/v1/vms/vm1/start", b"{not json", 400, "bad-request"),
    ("/v1/vms", b'{"name": "../etc", "disk_size": "16M"}', 422, "spec-invalid"),  # name charset
    ("/v1/vms", b'{"name": "' + b"a" * 64 + b'", "disk_size": "16M"}', 422, "spec-invalid"),  # name length
    ("/v1/vms/bad%2Cname/start", b"{}", 422, "spec-invalid"),
    ("/v1/vms/nope/start", b"{}", 404, "not-found"),
    ("/v1/vms/vm1/fly", b"{}", 404, "route-not-found"),
])
def test_bad_requests_are_rejected_and_change_nothing(vm1_service, path, body, status, code):
    service, hv = vm1_service, Hypervisor(vm1_service.root)
    got, data = raw(service, "POST", path, body, auth(service))
    assert (got, data["error"]["code"]) == (status, code), data
    assert data["error"]["message"] and "\n" not in data["error"]["message"]
    assert [vm.name for vm in hv.list_vms()] == ["vm1"]
    assert hv.get_vm("vm1").state.value == "poweredOff"


@pytest.mark.qemu
def test_every_invalid_state_action_pair_gets_409_with_a_stable_code(service):
    client = service.client
    small_vm(Hypervisor(service.root), "vm1")
    for action in ("stop", "reset", "pause", "resume"):
        status, data = raw(service, "POST", f"/v1/vms/vm1/{action}", b"{}", auth(service))
        assert (status, data["error"]["code"]) == (409, "invalid-state")
        assert data["error"]["details"] == {"vm": "vm1", "state": "poweredOff", "action": action,
                                            "legal": ["start", "unregister", "delete", "snapshot", "revert",
                                                      "delete a snapshot of", "clone", "resize a disk of",
                                                      "recover an interrupted operation on", "change a NIC of",
                                                      "reset the UEFI variables of", "change the CD-ROM medium of",
                                                      "replicate", "edit the specfile of"]}
    client.start_vm("vm1")
    for method, path, action in (("POST", "/v1/vms/vm1/start", "start"), ("POST", "/v1/vms/vm1/resume", "resume"),
                                 ("DELETE", "/v1/vms/vm1", "delete"), ("POST", "/v1/vms/vm1/unregister", "unregister")):
        status, data = raw(service, method, path, b"{}" if method == "POST" else None, auth(service))
        assert (status, data["error"]["code"], data["error"]["details"]["action"]) == (409, "invalid-state", action)
        assert data["error"]["details"]["state"] == "running"
    assert client.get_vm("vm1").state.value == "running"


def test_openapi_documents_every_route(service):
    from openapi_spec_validator import validate

    status, doc = raw(service, "GET", "/openapi.json", None, auth(service))
    assert status == 200 and doc["openapi"].startswith("3.1")
    validate(doc)  # OpenAPI 3.1's own schema, every $ref resolved, every path parameter declared
    schemas = doc["components"]["schemas"]

    def resolved(schema: dict) -> dict:
        return schemas[schema["$ref"].rpartition("/")[2]] if "$ref" in schema else schema

    for op in OPERATIONS:
        entry = doc["paths"][op.path][op.method.lower()]
        assert entry["operationId"] == op.name and entry["summary"]
        assert resolved(entry["responses"][str(op.status)]["content"]["application/json"]["schema"]), op.name
        error = resolved(entry["responses"]["default"]["content"]["application/json"]["schema"])
        assert set(schemas[error["properties"]["error"]["$ref"].rpartition("/")[2]]["required"]) \
            == {"type", "code", "message", "hint", "exit_code"}
        fields = set(REQUESTS[op.name].model_fields)
        if op.method == "GET":
            assert {p["name"] for p in entry["parameters"] if p["in"] == "query"} == fields, op.name
        elif fields:
            body = resolved(entry["requestBody"]["content"]["application/json"]["schema"])
            assert body["additionalProperties"] is False and set(body["properties"]) == fields, op.name
        else:
            assert "requestBody" not in entry, op.name
        assert {p["name"] for p in entry["parameters"] if p["in"] == "path"} == set(op.path_params)
    for method, path in (("post", "/v1/session"), ("post", "/v1/vms/{name}/consoles/{console}/ticket"),
                         ("put", "/v1/datastore/files/{folder}/{name}"), ("get", "/v1/events")):
        assert doc["paths"][path][method]["summary"]
    start = resolved(doc["paths"]["/v1/vms/{name}/start"]["post"]["requestBody"]["content"]["application/json"]
                     ["schema"])
    assert start["properties"]["wait_ready"]["type"] == "boolean"
    assert start["properties"]["timeout"] | {"minimum": 0, "type": "number"} == start["properties"]["timeout"]
    vm = resolved(doc["paths"]["/v1/vms/{name}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"])
    assert {"name", "uuid", "state", "memory_mib", "disks", "nics"} <= set(vm["required"])
    name = doc["paths"]["/v1/vms/{name}"]["get"]["parameters"][0]["schema"]
    assert name["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


def answered(service, op_name: str, path: str, body: dict | None = None):
    """One route's answer (which must be its success), held to the route's answer model."""
    op = by_name(op_name)
    status, data = raw(service, op.method, path, None if body is None else json.dumps(body).encode(), auth(service))
    assert status == op.status, (op_name, data)
    return answer(op).model_validate(data)  # extra="forbid": a field the document does not name fails too


def test_a_relative_host_path_names_a_file_of_the_datastore_not_of_the_services_working_folder(datastore, tmp_path,
                                                                                              monkeypatch):
    """A REST client's relative path is relative to the datastore's top, as the document says: it was the
    service's working folder (wherever it was started), where the same name may be another file."""
    workdir = tmp_path / "started-here"
    (workdir / "vm1").mkdir(parents=True)
    (workdir / "vm1" / "vm1.qcow2").write_bytes(b"not the VM's disk\n")
    monkeypatch.chdir(workdir)  # the service's working folder
    service = Running(datastore).start()
    try:
        answered(service, "create_vm", "/v1/vms", {"name": "vm1", "disk_size": "16M", "memory_mib": 64})
        info = answered(service, "disk_info", "/v1/disks/info?path=vm1/vm1.qcow2")
        assert (info.file, info.format, info.virtual_size) == (str(datastore / "vm1" / "vm1.qcow2"), "qcow2", 16 << 20)
        answered(service, "disk_create", "/v1/disks", {"path": "spare.qcow2", "size": "8M"})
        assert (datastore / "spare.qcow2").exists() and not (workdir / "spare.qcow2").exists()
    finally:
        service.stop()


def test_real_answers_are_what_the_document_says(service):
    """Each answer, as a real service sends it, fits its model (the document's schema), errors included."""
    answered(service, "create_vm", "/v1/vms", {"name": "vm1", "disk_size": "16M", "memory_mib": 64,
                                               "network": "nat", "cdrom": True})
    assert answered(service, "list_vms", "/v1/vms").root[0].disks[1].kind == "cdrom"
    vm = answered(service, "get_vm", "/v1/vms/vm1")
    assert vm.nics[0].network == "nat"
    disk = answered(service, "vm_disks", "/v1/vms/vm1/disks").root[0]
    assert (disk.node, disk.fileName, disk.format, disk.virtual_size) == ("scsi0:0", "vm1.qcow2", "qcow2", 16 << 20)
    info = answered(service, "disk_info", f"/v1/disks/info?path={quote(disk.file)}")
    assert (info.file, info.chain[0].backing_file) == (disk.file, None)
    assert answered(service, "vm_addresses", "/v1/vms/vm1/addresses").root[0].mac == vm.nics[0].mac
    added = answered(service, "port_forward_add", "/v1/vms/vm1/port-forwards", {"forward": "8080:80"})
    assert (added.host_port, added.guest_port, added.protocol) == (8080, 80, "tcp")
    assert answered(service, "port_forward_list", "/v1/vms/vm1/port-forwards").root[0].host_port == 8080
    files = answered(service, "datastore_files", "/v1/datastore/files?folder=vm1")
    assert {(e.name, e.kind) for e in files.entries} >= {("vm1.qcow2", "file"), ("vm1.vmx", "file")}
    assert answered(service, "datastore_files", "/v1/datastore/files").entries[0].kind == "folder"
    assert answered(service, "cdrom", "/v1/vms/vm1/cdrom", {"image": None}).image is None
    check = answered(service, "check_vmx", "/v1/check", {"vmx_path": vm.vmx})
    assert check.powers_on and check.counts["refused"] == 0 and check.keys
    spare = str(Path(service.root) / "spare.qcow2")
    assert answered(service, "disk_create", "/v1/disks", {"path": spare, "size": "8M"}).virtual_size == 8 << 20
    assert answered(service, "disk_resize", "/v1/disks/resize", {"path": spare, "size": "16M"}).thin
    copy = answered(service, "disk_convert", "/v1/disks/convert", {"source": spare, "target": spare + ".raw"})
    assert copy.format == "raw"
    assert answered(service, "datastore_delete", "/v1/datastore/files/delete",
                    {"folder": "", "name": "spare.qcow2.raw"}).deleted
    resized = answered(service, "vm_disk_resize", "/v1/vms/vm1/disks/resize", {"node": "scsi0:0", "size": "32M"})
    assert resized.virtual_size == 32 << 20
    assert answered(service, "add_disk", "/v1/vms/vm1/disks", {"size": "8M"}).node == "scsi0:1"
    assert answered(service, "set_resources", "/v1/vms/vm1/resources", {"cpus": 2}).cpus == 2
    assert answered(service, "set_nic", "/v1/vms/vm1/nics/ethernet0", {"link": False}).link == "down"
    assert answered(service, "add_nic", "/v1/vms/vm1/nics", {"nic": "ethernet1"}).nic == "ethernet1"
    answered(service, "port_forward_add", "/v1/vms/vm1/port-forwards", {"forward": "8081:22", "nic": "ethernet1"})
    removed = answered(service, "remove_nic", "/v1/vms/vm1/nics/ethernet1")
    assert [f.host_port for f in removed.forwards_removed] == [8081]
    answered(service, "set_autostart", "/v1/vms/vm1/autostart", {"enabled": True})
    specfile = answered(service, "get_specfile", "/v1/vms/vm1/specfile")
    assert len(specfile.stamp) == 64
    edited = answered(service, "put_specfile", "/v1/vms/vm1/specfile",
                      {"text": specfile.text + 'annotation = "edited"\n', "stamp": specfile.stamp})
    assert edited.powers_on and edited.stamp != specfile.stamp
    assert answered(service, "reset_nvram", "/v1/vms/vm1/reset-nvram", {}).root is False  # BIOS: no NVRAM
    assert answered(service, "nic_traffic", "/v1/vms/vm1/traffic").root == {}  # powered off: no tap
    answered(service, "snapshot_take", "/v1/vms/vm1/snapshots", {"snapshot": "s1", "description": "first"})
    answered(service, "snapshot_take", "/v1/vms/vm1/snapshots", {"snapshot": "s2"})
    tree = answered(service, "snapshot_list", "/v1/vms/vm1/snapshots").root
    assert [(s.name, s.depth, s.current) for s in tree] == [("s1", 0, False), ("s2", 1, True)]
    snapshot, running = answered(service, "snapshot_revert", "/v1/vms/vm1/snapshots/revert", {"snapshot": "s1"}).root
    assert (snapshot.name, running) == ("s1", False)
    answered(service, "snapshot_delete", "/v1/vms/vm1/snapshots/delete", {"snapshot": "s2"})
    assert answered(service, "clone_vm", "/v1/vms/vm1/clone", {"target": "vm2", "linked": True,
                                                               "snapshot": "s1"}).name == "vm2"
    events = answered(service, "vm_events", "/v1/vms/vm1/events?limit=0").root
    assert {"autostartChanged", "snapshotTaken", "snapshotReverted"} <= {event.type for event in events}
    assert {n.name for n in answered(service, "list_networks", "/v1/networks").root} >= {"nat", "hostonly"}
    answered(service, "get_network", "/v1/networks/nat")
    answered(service, "unregister_vm", "/v1/vms/vm2/unregister")
    status, data = raw(service, "GET", "/v1/vms/vm2", None, auth(service))
    assert status == 404 and ErrorAnswer.model_validate(data).error.code == "not-found"
    status, data = raw(service, "POST", "/v1/vms", b'{"name": "x", "extra": 1}', auth(service))
    assert status == 400 and ErrorAnswer.model_validate(data).error.code == "bad-request"


@pytest.mark.qemu
def test_real_answers_of_a_running_vm_are_what_the_document_says(service):
    small_vm(Hypervisor(service.root), "vm1")
    assert answered(service, "host_info", "/v1/host").accel.accel in ("kvm", "tcg")
    explained = answered(service, "explain_vm", "/v1/vms/vm1/explain")
    assert explained.spec["display_name"] == "vm1" and "-m" in explained.argv and explained.hardware
    started = answered(service, "start_vm", "/v1/vms/vm1/start", {})
    assert (started.vm.state, started.vm.pid is not None) == ("running", True)
    answered(service, "pause_vm", "/v1/vms/vm1/pause", {})
    assert answered(service, "get_vm", "/v1/vms/vm1").state == "paused"
    answered(service, "resume_vm", "/v1/vms/vm1/resume", {})
    answered(service, "stop_vm", "/v1/vms/vm1/stop", {"hard": True})


def test_the_route_table_matches_the_core_api():
    import inspect

    from minivisor.core.hypervisor import Hypervisor as Core

    for op in OPERATIONS:
        params = list(inspect.signature(getattr(Core, op.name)).parameters)[1:]
        assert params[:len(op.args)] == list(op.args), op.name


@pytest.mark.qemu
def test_client_returns_the_core_types_and_errors(service):
    client = service.client
    vm = client.create_vm("vm1", disk_size="16M", memory_mib=64, network="none")
    direct = Hypervisor(service.root).get_vm("vm1")
    assert vm == direct
    assert client.list_vms() == [direct]
    assert client.explain_vm("vm1") == Hypervisor(service.root).explain_vm("vm1")
    with pytest.raises(NotFoundError) as caught:
        client.get_vm("nope")
    assert caught.value.code == "not-found" and caught.value.hint
    result = client.start_vm("vm1")
    assert result.vm.state.value == "running" and result.vm.pid
    with pytest.raises(StateError):
        client.start_vm("vm1")
    assert client.stop_vm("vm1", hard=True) in ("hard", "killed")
    client.delete_vm("vm1")
    assert client.list_vms() == []


@pytest.mark.parametrize("args", [["vm", "list"], ["vm", "show", "vm1"], ["vm", "show", "nope"],
                                  ["vm", "show", "vm1", "--json"], ["vm", "start", "nope"],
                                  ["vm", "resume", "vm1"], ["vm", "create", "a,b", "--disk-size", "16M"],
                                  pytest.param(["vm", "explain", "vm1", "--json"],  # the KVM probe
                                               marks=pytest.mark.qemu),
                                  ["vm", "autostart", "vm1", "maybe"],
                                  ["vm", "delete", "nope"]])
def test_the_cli_gives_the_same_output_and_exit_code_through_the_service(service, args):
    small_vm(Hypervisor(service.root), "vm1")
    via_service = service.cli(*args)
    direct = service.cli(*args, direct=True)
    assert (via_service.returncode, via_service.stdout, via_service.stderr) == \
        (direct.returncode, direct.stdout, direct.stderr)


@pytest.mark.qemu
def test_cli_power_cycle_through_the_service_is_seen_by_the_service(service):
    small_vm(Hypervisor(service.root), "vm1")
    started = service.cli("vm", "start", "vm1", check=True)
    assert "vm1 is powered on" in started.stdout
    assert service.client.get_vm("vm1").state.value == "running"
    again = service.cli("vm", "start", "vm1")
    assert again.returncode == 4 and again.stderr.startswith("error: cannot start VM 'vm1': it is running")
    assert "vm1 is powered off" in service.cli("vm", "stop", "vm1", "--hard", check=True).stdout
    types = [e["type"] for e in service.client.vm_events("vm1")]
    assert types[-3:] == ["poweredOn", "poweringOff", "poweredOff"]


@pytest.mark.parametrize("listen, code, words", [("127.0.0.1:0", 4, "already runs"), ("nonsense", 64, "HOST:PORT"),
                                                 ("127.0.0.1:99999", 64, "HOST:PORT")])
def test_serve_refuses_a_second_service_or_a_bad_address_in_one_line(service, listen, code, words):
    if code == 64:
        service.stop()  # the datastore is free: only the address is wrong
    result = service.cli("serve", "--listen", listen)
    assert result.returncode == code and words in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


@pytest.mark.qemu
def test_the_client_does_not_send_on_a_connection_the_service_closed_as_idle(service):
    client = service.client
    small_vm(Hypervisor(service.root), "vm1")
    assert client.get_vm("vm1").state.value == "poweredOff"  # leaves a kept-alive connection behind
    poller = select.poll()
    poller.register(client._local.conn.sock, select.POLLIN)
    assert poller.poll((KEEP_ALIVE + 15) * 1000), "the service kept an idle connection open"
    assert client._local.conn.sock.recv(1) == b""  # closed by the service
    # a POST is not retried by the client (it may have happened): it must go out on a live connection
    assert client.start_vm("vm1").vm.state.value == "running"
    assert client.stop_vm("vm1", hard=True) in ("hard", "killed")
