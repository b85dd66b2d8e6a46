"""The OpenAPI 3 document of the REST API, built from the route table and the core methods' signatures."""

from __future__ import annotations

import inspect
from typing import Any

from .. import __version__
from ..core.hypervisor import Hypervisor
from .params import param_specs, schema
from .routes import OPERATIONS, Op

__all__ = ["openapi"]

VM_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}  # what check_vm_name accepts
SEGMENT = {"type": "string", "pattern": "^[^/\\\\]{1,128}$"}  # what routes.check_segment accepts
ERROR = {"description": "an error: {error: {type, code, message, hint, exit_code}}"}
# Routes that are not core methods (the web page at / and its files are not part of the API): method, path, summary.
EXTRA = (("get", "/v1/events", "Server-sent events of VM state changes"),
         ("get", "/v1/tasks", "The running and recent operations (newest first): id, operation, vm, subject, started, "
                              "ended, state (running, done, failed), progress (0-100, null if unmeasured), note, "
                              "error; each change is also a `task` event"),
         ("get", "/v1/metrics", "Per-VM and host metrics (JSON)"),
         ("get", "/metrics", "Metrics in Prometheus text format"),
         ("post", "/v1/session", "Log in with the token (body {token}): a session cookie (HttpOnly, SameSite=Strict); "
                                 "changes made with it alone must send X-Minivisor-CSRF from the service's own page"),
         ("get", "/v1/session", "Whether the caller is authorized (the token or a session)"),
         ("delete", "/v1/session", "Log out: the session ends"),
         ("post", "/v1/vms/{name}/consoles/{console}/ticket",
          "A single-use ticket (30 s) for one console websocket of the VM: serial or vnc"),
         ("get", "/v1/vms/{name}/consoles/{console}",
          "The console websocket (?ticket=...), bridged to the VM's own UNIX socket (binary frames)"),
         ("put", "/v1/datastore/files/{folder}/{name}",
          "Upload the request's body as a new file (.iso, .img, .vmdk, .qcow2) into a folder of the datastore"))


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document: one operation per row of the route table, plus events, metrics, sessions,
    console tickets and websockets, and uploads."""
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    for method, path, summary in EXTRA:
        paths.setdefault(path, {})[method] = {"summary": summary, "responses": {"200": {"description": summary},
                                                                             "default": ERROR}}
    return {"openapi": "3.0.3", "info": {"title": "minivisor", "version": __version__},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}], "paths": paths}


def _operation(op: Op) -> dict[str, Any]:
    """One operation: its summary (the core method's first doc line), parameters, body and answers."""
    summary = (inspect.getdoc(getattr(Hypervisor, op.name)) or "").split("\n")[0]
    entry: dict[str, Any] = {"operationId": op.name, "summary": summary,
                             "parameters": [{"name": p, "in": "path", "required": True,
                                             "schema": VM_NAME if p == op.vm_param else SEGMENT}
                                            for p in op.path_params],
                             "responses": {str(op.status): {"description": op.returns}, "default": ERROR}}
    fields = {n: p for n, p in param_specs(op).items() if n not in op.path_params}
    if fields and op.method in ("POST", "PUT"):
        entry["requestBody"] = {"content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False,
            "properties": {n: schema(p.annotation) for n, p in fields.items()},
            "required": [n for n, p in fields.items() if p.default is inspect.Parameter.empty]}}}}
    elif fields:
        entry["parameters"] += [{"name": n, "in": "query", "schema": schema(p.annotation)} for n, p in fields.items()]
    return entry
