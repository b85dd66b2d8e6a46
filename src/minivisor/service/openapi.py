"""The OpenAPI 3.1 document of the REST API, made from the route table and its models.

Each row of the route table is one operation: its path parameters, its request
model (:data:`~minivisor.service.models.REQUESTS`) as a JSON body or as query
parameters (GET), its answer's model and the error envelope. Every model is a
schema of ``components`` (pydantic's JSON Schema, which is OpenAPI 3.1's), named
by ``$ref``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..core.hypervisor import Hypervisor
from .models import REQUESTS, ErrorAnswer, NoFields, Segment, VmName, answer
from .routes import OPERATIONS, Op

__all__ = ["openapi"]

REF = "#/components/schemas/{model}"
ERROR = {"description": "an error: {error: {type, code, message, hint, exit_code}}",
         "content": {"application/json": {"schema": {"$ref": REF.format(model=ErrorAnswer.__name__)}}}}
VM_NAME, SEGMENT = TypeAdapter(VmName).json_schema(), TypeAdapter(Segment).json_schema()
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
    """The OpenAPI 3.1 document: one operation per row of the route table, plus events, metrics, sessions,
    console tickets and websockets, and uploads."""
    models = ({REQUESTS[op.name] for op in OPERATIONS} - {NoFields}) | {answer(op) for op in OPERATIONS} | {ErrorAnswer}
    _, top = models_json_schema([(model, "validation") for model in sorted(models, key=lambda m: m.__name__)],
                                ref_template=REF)
    schemas = top.get("$defs", {})
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    for method, path, summary in EXTRA:
        vm_param = "name" if path.startswith("/v1/vms/{name}") else None
        paths.setdefault(path, {})[method] = {"summary": summary, "parameters": _path_parameters(path, vm_param),
                                              "responses": {"200": {"description": summary}, "default": ERROR}}
    return {"openapi": "3.1.0", "info": {"title": "minivisor", "version": __version__},
            "components": {"schemas": schemas,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}], "paths": paths}


def _operation(op: Op, schemas: dict[str, Any]) -> dict[str, Any]:
    """One operation: its summary (the core method's first doc line), parameters, body and answers."""
    summary = (inspect.getdoc(getattr(Hypervisor, op.name)) or "").split("\n")[0]
    entry: dict[str, Any] = {"operationId": op.name, "summary": summary or op.name.replace("_", " "),
                             "parameters": _path_parameters(op.path, op.vm_param),
                             "responses": {str(op.status): _answer(op), "default": ERROR}}
    request = REQUESTS[op.name]
    if request is NoFields:
        return entry
    if op.method == "GET":
        fields = schemas[request.__name__]
        entry["parameters"] += [{"name": name, "in": "query", "required": name in fields.get("required", ()),
                                 "schema": schema} for name, schema in fields["properties"].items()]
    else:
        entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(request)}}}
    return entry


def _path_parameters(path: str, vm_param: str | None) -> list[dict[str, Any]]:
    """A path's ``{parameters}``: the one that names a VM is a VM's name, any other one path segment."""
    return [{"name": p, "in": "path", "required": True, "schema": VM_NAME if p == vm_param else SEGMENT}
            for p in re.findall(r"\{(\w+)\}", path)]


def _answer(op: Op) -> dict[str, Any]:
    model = answer(op)
    return {"description": (model.__doc__ or model.__name__).split("\n")[0],
            "content": {"application/json": {"schema": _ref(model)}}}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}
