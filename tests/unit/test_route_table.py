"""The REST route table: each row matches its core method, no route shadows another, and a request path
reaches its operation through the service's own Starlette routes."""

from __future__ import annotations

import asyncio
import inspect
import itertools

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Router

from minivisor.core.hypervisor import Hypervisor
from minivisor.service.app import operation_routes
from minivisor.service.routes import OPERATIONS, Op, by_name

# VM names as a path parameter, among them the literal segments of other routes
NAMES = ("web", "vm-1.a_b", "register", "import", "events", "snapshots", "clone", "v1")


def positional(op: Op) -> tuple[str, ...]:
    """The core method's parameters that may be passed by position, in order."""
    parameters = inspect.signature(getattr(Hypervisor, op.name)).parameters.values()
    return tuple(p.name for p in parameters if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)


def concrete(op: Op, name: str) -> tuple[str, dict[str, str]]:
    """A request path for ``op`` with every path parameter set to ``name``, and the parameters."""
    params = {param: name for param in op.path_params}
    path = op.path
    for param, value in params.items():
        path = path.replace("{" + param + "}", value)
    return path, params


def scope(method: str, path: str) -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"", "headers": []}


def route_to(router: Router, method: str, path: str) -> tuple[int, bytes]:
    """Send one request through ``router`` (ASGI, as uvicorn would): the status and body it answers."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(router(scope(method, path), receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def recording(op: Op):
    """An endpoint that answers with the operation it stands for and the path parameters it was given."""

    async def endpoint(request: Request) -> Response:
        params = ",".join(f"{k}={v}" for k, v in sorted(request.path_params.items()))
        return Response(f"{op.name} {params}".encode())

    return endpoint


ROUTER = Router(routes=operation_routes(recording))


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
def test_each_row_names_a_core_method_whose_parameters_it_uses(op):
    method = getattr(Hypervisor, op.name, None)
    assert callable(method) and not op.name.startswith("_"), f"Hypervisor has no method {op.name}"
    assert op.args == positional(op), "args: the method's positional parameters, in its order (the client maps them)"
    parameters = inspect.signature(method).parameters
    for param in op.path_params:
        assert param in op.args and parameters[param].default is inspect.Parameter.empty, \
            f"path parameter {param!r} must be a required positional parameter"


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
def test_each_row_is_a_well_formed_route(op):
    assert op.method in ("GET", "POST", "PUT", "DELETE") and 200 <= op.status < 300
    assert op.path.startswith("/v1/") and not op.path.endswith("/")
    assert not (op.method == "GET" and op.mutates), "a GET changes nothing (browsers and proxies repeat them)"
    assert by_name(op.name) is op


def test_names_and_routes_are_unique():
    assert len({op.name for op in OPERATIONS}) == len(OPERATIONS)
    assert len({(op.method, op.path) for op in OPERATIONS}) == len(OPERATIONS)


@pytest.mark.parametrize(("a", "b"), [(a, b) for a, b in itertools.permutations(OPERATIONS, 2) if a.method == b.method],
                         ids=lambda op: op.name)
def test_no_route_matches_another_routes_paths(a, b):
    """Whatever the order of the table, no request for ``a`` could be taken by ``b``."""
    route = next(r for r in ROUTER.routes if r.name == b.name)
    for name in NAMES:
        path, _ = concrete(a, name)
        assert route.matches(scope(a.method, path))[0] is not Match.FULL, f"{b.path} takes {a.method} {path}"


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
@pytest.mark.parametrize("name", NAMES)
def test_a_request_reaches_its_operation_with_its_path_parameters(op, name):
    path, params = concrete(op, name)
    status, body = route_to(ROUTER, op.method, path)
    expected = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    assert (status, body.decode()) == (200, f"{op.name} {expected}")


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/vms/web/start", 405),  # a route, another method
    ("PATCH", "/v1/vms/web", 405),
    ("GET", "/v1/vms/web/nothing", 404),
    ("GET", "/v1/vms/a/b", 404),  # a name with a slash is two segments: no route
    ("GET", "/v2/vms", 404),
])
def test_a_path_that_is_no_operation_reaches_none(method, path, status):
    assert route_to(ROUTER, method, path)[0] == status


def test_each_row_names_the_parameter_that_is_a_vm_and_only_vm_routes_have_one():
    for op in OPERATIONS:
        if op.vm_param is None:
            assert not op.path.startswith("/v1/vms/{"), op.name
        else:
            assert op.path.startswith("/v1/vms") and op.vm_param in positional(op), op.name


@pytest.mark.parametrize("op_name, params, refused", [
    ("get_network", {"name": "lab.tmp"}, False),  # a network's name is no VM's: ".tmp" is fine for it
    ("set_nic", {"name": "web", "nic": "ethernet0"}, False),
    ("get_network", {"name": ".."}, True), ("set_nic", {"name": "web", "nic": "a\x00b"}, True),
    ("get_vm", {"name": "web.tmp"}, True),  # a VM's name is checked as one
])
def test_path_parameters_are_checked_by_what_they_name(op_name, params, refused):
    from minivisor.errors import HvError
    from minivisor.service.models import arguments

    body = {"link": True} if op_name == "set_nic" else {}
    try:
        arguments(by_name(op_name), params, body)
    except HvError:
        assert refused
    else:
        assert not refused


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
def test_each_route_has_a_request_model_with_the_core_methods_parameters_and_defaults(op):
    """A request model's fields are its core method's parameters (but the path's, and ``progress`` and
    ``finish_later``: callbacks stay on the service's side), required where the method requires them, with its
    defaults."""
    from pydantic_core import PydanticUndefined

    from minivisor.service.models import ANSWERS_BY_OP, REQUESTS, answer

    model = REQUESTS.get(op.name)
    assert model is not None, f"service/models.py: REQUESTS has no model for {op.name}"
    parameters = {name: p for name, p in inspect.signature(getattr(Hypervisor, op.name)).parameters.items()
                  if name not in ("self", "progress", "finish_later", *op.path_params)}
    assert set(model.model_fields) == set(parameters), op.name
    for name, field in model.model_fields.items():
        default = parameters[name].default
        assert (field.default is PydanticUndefined) == (default is inspect.Parameter.empty), (op.name, name)
        if default is not inspect.Parameter.empty:
            assert field.default == default, (op.name, name)
    assert op.returns != "json" or op.name in ANSWERS_BY_OP, f"service/models.py: no answer model for {op.name}"
    assert answer(op) is not None


def test_every_request_model_is_some_routes():
    from minivisor.service.models import REQUESTS

    assert set(REQUESTS) == {op.name for op in OPERATIONS}


@pytest.mark.parametrize("op_name, values, code, said", [
    ("create_vm", {"name": "a", "cpus": True}, "bad-request", ("'cpus'", "wrong type (boolean)", "integer")),
    ("create_vm", {"name": "a", "memory_mib": 2**80}, "invalid-argument", ("'memory_mib'", "4 to 16777216")),
    ("start_vm", {"timeout": float("nan")}, "invalid-argument", ("'timeout'", "finite", "0 to 86400")),
    ("start_vm", {"wait": True}, "bad-request", ("unknown field 'wait'", "wait_ready, timeout")),
    ("snapshot_take", {}, "bad-request", ("missing field 'snapshot'",)),
    ("port_forward_add", {"forward": "80:22,x"}, "invalid-argument", ("not well-formed: '80:22,x'", "HOSTPORT")),
    ("disk_info", {"path": "a/../../b"}, "path-unsafe", ("'a/../../b'", "..")),
    ("migrate_vm", {"host": "../b"}, "invalid-argument", ("'host'", "not well-formed: '../b'", "live host")),
    ("migrate_vm", {"host": "b" * 64}, "invalid-argument", ("'host'", "at most 63 characters")),
    ("migrate_vm", {"host": 5}, "bad-request", ("'host'", "wrong type (number)")),
])
def test_a_refused_value_is_said_in_one_line_naming_the_field_and_what_it_may_be(op_name, values, code, said):
    from minivisor.errors import HvError
    from minivisor.service.models import arguments

    op = by_name(op_name)
    with pytest.raises(HvError) as refused:
        arguments(op, {param: "web" for param in op.path_params}, values)
    error = refused.value
    line = f"{error.message} | {error.hint}"
    assert error.code == code and "\n" not in line and all(words in line for words in said), line


def test_path_parameters_are_the_braced_names_of_each_path():
    """Read without re (the client's path): the same names a regex finds, and Starlette's own."""
    import re

    for op in OPERATIONS:
        assert op.path_params == tuple(re.findall(r"\{(\w+)\}", op.path)), op.path
        assert set(op.path_params) == set(Router(routes=operation_routes(lambda op: None)).routes[
            OPERATIONS.index(op)].param_convertors), op.path
