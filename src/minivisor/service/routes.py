"""The REST API's one mapping: which core API method answers which HTTP route.

Both sides read this table: the service makes one route per row
(:mod:`minivisor.service.app`; Starlette's ``{name}`` matches one path segment, as
here), dispatches it to ``Hypervisor.<method>`` (:mod:`minivisor.service.dispatch`)
and builds its OpenAPI document from it (:mod:`minivisor.service.openapi`), and the
client (:mod:`minivisor.client`) turns a method call back into a request and the
answer back into the method's return type, as ``returns`` says. The service checks
a row's values with its typed request model (:data:`minivisor.service.models.REQUESTS`,
by ``name``) and documents its answer by ``returns``.
Exposing a new core method is one row here and its request model there. Stdlib only,
so the CLI can import it cheaply.

Path parameters are written ``{name}``; every other parameter travels in the
JSON body (POST/PUT) or the query string (GET). ``args`` lists the method's
parameters in the order the core API takes them positionally.
"""

from __future__ import annotations

import functools
from collections import namedtuple

__all__ = ["Op", "OPERATIONS", "by_name", "check_segment"]


# A named tuple, not a dataclass: dataclasses loads inspect, ~10 ms of every CLI command through a service.
class Op(namedtuple("Op", "name method path returns args status mutates vm_param",
                    defaults=(("name",), 200, True, "name"))):
    """One route. name: the Hypervisor method; method, path: HTTP's; returns: the result's type, for the client
    (vm, vms, start, explanation, exec, host, snapshot, snapshot_revert, network, networks, events, json as
    is, text a string, bytes base64 in JSON, none); args: the method's positional parameters; status: on
    success; mutates: serialised per VM inside the service; vm_param: the parameter (path or body) that names
    the VM, None on routes of no VM."""

    __slots__ = ()

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(part.partition("}")[0] for part in self.path.split("{")[1:])  # without re (~3 ms a command)


OPERATIONS: tuple[Op, ...] = (
    Op("list_vms", "GET", "/v1/vms", "vms", args=(), mutates=False, vm_param=None),
    Op("create_vm", "POST", "/v1/vms", "vm", status=201),
    Op("register_vm", "POST", "/v1/vms/register", "vm", args=("vmx_path", "name"), status=201),
    Op("get_vm", "GET", "/v1/vms/{name}", "vm", mutates=False),
    Op("delete_vm", "DELETE", "/v1/vms/{name}", "none"),
    Op("unregister_vm", "POST", "/v1/vms/{name}/unregister", "none"),
    Op("explain_vm", "GET", "/v1/vms/{name}/explain", "explanation", mutates=False),
    Op("get_specfile", "GET", "/v1/vms/{name}/specfile", "json", mutates=False),
    Op("put_specfile", "PUT", "/v1/vms/{name}/specfile", "json", args=("name", "text", "stamp")),
    Op("vm_events", "GET", "/v1/vms/{name}/events", "events", args=("name", "limit"), mutates=False),
    Op("start_vm", "POST", "/v1/vms/{name}/start", "start"),
    Op("stop_vm", "POST", "/v1/vms/{name}/stop", "text"),
    Op("reset_vm", "POST", "/v1/vms/{name}/reset", "none"),
    Op("pause_vm", "POST", "/v1/vms/{name}/pause", "none"),
    Op("resume_vm", "POST", "/v1/vms/{name}/resume", "none"),
    Op("wait_ready", "POST", "/v1/vms/{name}/wait-ready", "text", mutates=False),
    Op("exec_in_vm", "POST", "/v1/vms/{name}/exec", "exec", args=("name", "command"), mutates=False),
    Op("copy_to_guest", "POST", "/v1/vms/{name}/copy-to", "json", args=("name", "host_path", "guest_path"),
       mutates=False),
    Op("copy_from_guest", "POST", "/v1/vms/{name}/copy-from", "json", args=("name", "guest_path", "host_path"),
       mutates=False),
    Op("set_autostart", "PUT", "/v1/vms/{name}/autostart", "vm", args=("name", "enabled")),
    Op("set_ha", "PUT", "/v1/vms/{name}/ha", "vm", args=("name", "enabled")),
    Op("reset_nvram", "POST", "/v1/vms/{name}/reset-nvram", "json"),
    Op("cdrom", "POST", "/v1/vms/{name}/cdrom", "json", args=("name", "image")),
    Op("screenshot", "GET", "/v1/vms/{name}/screenshot", "bytes", mutates=False),
    Op("check_vmx", "POST", "/v1/check", "json", args=("vmx_path",), mutates=False, vm_param=None),
    Op("host_info", "GET", "/v1/host", "host", args=(), mutates=False, vm_param=None),
    # the datastore browser (core/files.py; uploads stream through their own route: service/app.py)
    Op("datastore_files", "GET", "/v1/datastore/files", "json", args=("folder",), mutates=False, vm_param=None),
    Op("datastore_delete", "POST", "/v1/datastore/files/delete", "json", args=("folder", "name"), vm_param=None),
    # disks, snapshots, clones (storage.py, snapshots.py, clones.py, vmware.py)
    Op("vm_disks", "GET", "/v1/vms/{name}/disks", "json", mutates=False),
    Op("vm_disk_resize", "POST", "/v1/vms/{name}/disks/resize", "json", args=("name", "node", "size")),
    Op("add_disk", "POST", "/v1/vms/{name}/disks", "json", args=("name", "size"), status=201),
    Op("set_resources", "POST", "/v1/vms/{name}/resources", "json"),
    Op("snapshot_list", "GET", "/v1/vms/{name}/snapshots", "json", mutates=False),
    Op("snapshot_take", "POST", "/v1/vms/{name}/snapshots", "snapshot", args=("name", "snapshot"), status=201),
    Op("snapshot_revert", "POST", "/v1/vms/{name}/snapshots/revert", "snapshot_revert", args=("name", "snapshot")),
    Op("snapshot_delete", "POST", "/v1/vms/{name}/snapshots/delete", "snapshot", args=("name", "snapshot")),
    Op("clone_vm", "POST", "/v1/vms/{source}/clone", "vm", args=("source", "target"), status=201, vm_param="source"),
    Op("import_vm", "POST", "/v1/vms/import", "vm", args=("folder", "name"), status=201),
    Op("disk_create", "POST", "/v1/disks", "json", args=("path", "size"), status=201, vm_param=None),
    Op("disk_info", "GET", "/v1/disks/info", "json", args=("path",), mutates=False, vm_param=None),
    Op("disk_resize", "POST", "/v1/disks/resize", "json", args=("path", "size"), vm_param=None),
    Op("disk_convert", "POST", "/v1/disks/convert", "json", args=("source", "target"), status=201, vm_param=None),
    # networks (core/networks.py)
    Op("list_networks", "GET", "/v1/networks", "networks", args=(), mutates=False, vm_param=None),
    Op("create_network", "POST", "/v1/networks", "network", status=201, vm_param=None),
    Op("get_network", "GET", "/v1/networks/{name}", "network", mutates=False, vm_param=None),
    Op("delete_network", "DELETE", "/v1/networks/{name}", "none", vm_param=None),
    Op("vm_addresses", "GET", "/v1/vms/{name}/addresses", "json", mutates=False),
    Op("set_nic", "POST", "/v1/vms/{name}/nics/{nic}", "json", args=("name", "nic")),
    Op("add_nic", "POST", "/v1/vms/{name}/nics", "json", args=("name", "nic"), status=201),
    Op("remove_nic", "DELETE", "/v1/vms/{name}/nics/{nic}", "json", args=("name", "nic")),
    Op("nic_traffic", "GET", "/v1/vms/{name}/traffic", "json", mutates=False),
    Op("port_forward_list", "GET", "/v1/vms/{name}/port-forwards", "json", mutates=False),
    Op("port_forward_add", "POST", "/v1/vms/{name}/port-forwards", "json", args=("name", "forward"), status=201),
    Op("port_forward_remove", "POST", "/v1/vms/{name}/port-forwards/remove", "none", args=("name", "forward")),
    # the cluster (core/hypervisor.py's cluster_*, minivisor.cluster)
    Op("cluster_status", "GET", "/v1/cluster", "json", args=(), mutates=False, vm_param=None),
    Op("cluster_init", "POST", "/v1/cluster/init", "json", args=("etcd",), vm_param=None),
    Op("cluster_join", "POST", "/v1/cluster/join", "json", args=("etcd",), vm_param=None),
    Op("cluster_leave", "POST", "/v1/cluster/leave", "json", args=(), vm_param=None),
    Op("migrate_vm", "POST", "/v1/vms/{name}/migrate", "json", args=("name", "host")),
    Op("replicate_vm", "POST", "/v1/vms/{name}/replicate", "json", args=("name", "host", "every")),
    Op("stop_replication", "POST", "/v1/vms/{name}/replicate/off", "json"),
)

_BY_NAME = {op.name: op for op in OPERATIONS}


def by_name(name: str) -> Op | None:
    return _BY_NAME.get(name)


def check_segment(value: str) -> str:
    """A path parameter that names no VM (a network, a NIC), if it stays one path segment, else ValueError.

    The service decodes %2F: a "/" sent in a name would be two segments and reach another route. What the
    value may be beyond that is the core's to say (a network's name rules are the network's)."""
    if not _segment().match(value) or value in (".", ".."):
        raise ValueError(f"{value[:40]!r} cannot be part of a request path")
    return value


@functools.cache
def _segment():
    """One path segment (compiled when first needed: only routes of no VM have such a parameter; re with enum costs
    ~3 ms a command)."""
    import re

    return re.compile(r"[^/\\\x00-\x1f\x7f]{1,128}\Z")
