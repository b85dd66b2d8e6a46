"""A request's values checked against the core method it calls, before anything runs.

Each route's parameters are those of its :class:`~minivisor.core.hypervisor.Hypervisor`
method (:func:`param_specs`, read from the signature; callables such as
``progress`` are left out). :func:`check_arguments` refuses unknown and missing
fields, values of the wrong JSON type, numbers that are not finite or are
negative, and strings and lists beyond :data:`MAX_STRING` (:data:`LONG_STRINGS` for a file's text) and :data:`MAX_ITEMS`;
the core then checks each argument's own range. :func:`schema` describes a
parameter for the OpenAPI document.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from pathlib import Path
from typing import Any

from ..core.hypervisor import Hypervisor
from ..datastore.store import check_vm_name
from ..errors import ArgumentError, RequestError
from ..text import excerpt
from .routes import Op, check_segment

__all__ = ["MAX_STRING", "MAX_ITEMS", "LONG_STRINGS", "param_specs", "check_arguments", "schema"]

MAX_STRING = 4096  # characters in one string value (a path: PATH_MAX)
MAX_ITEMS = 256  # values in one list (a command's words)
LONG_STRINGS = {"text": 64 * 1024}  # characters in the fields that carry a file's text (a specfile: put_specfile)


def param_specs(op: Op) -> dict[str, inspect.Parameter]:
    """The JSON-able parameters of the core method behind ``op`` (callables left out)."""
    method = inspect.unwrap(getattr(Hypervisor, op.name))
    # the parameters' annotations only: a return type may name a class the core imports only where it is used
    parameters = [p.replace(annotation=eval(p.annotation, method.__globals__) if isinstance(p.annotation, str)
                            else p.annotation) for p in inspect.signature(method).parameters.values()]
    return {p.name: p for p in parameters if p.name != "self" and "Callable" not in repr(p.annotation)}


def check_arguments(op: Op, specs: dict[str, inspect.Parameter], path_params: dict[str, str],
                    body: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for the core method, once every value of the request checks out."""
    for name, value in path_params.items():
        if name == op.vm_param:
            check_vm_name(value)
        else:
            try:
                check_segment(value)
            except ValueError as exc:
                raise RequestError(str(exc), hint="see /openapi.json") from None
    fields = set(specs) - set(path_params)
    unknown = sorted(set(body) - fields)
    if unknown:
        raise RequestError(f"unknown field(s) for {op.name}: {', '.join(excerpt(name) for name in unknown[:5])}",
                           hint=f"the fields are: {', '.join(sorted(fields)) or 'none'}")
    for name in sorted(fields):
        spec = specs[name]
        if name not in body:
            if spec.default is inspect.Parameter.empty:
                raise RequestError(f"missing field {name!r} for {op.name}", hint="see /openapi.json")
            continue
        if not _type_ok(body[name], spec.annotation):
            raise RequestError(f"field {name!r} has the wrong type ({type(body[name]).__name__})",
                               hint=f"expected {schema(spec.annotation) or spec.annotation}")
        _check_bounds(name, body[name])
    return {**path_params, **body}


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (str, Path):
        return isinstance(value, str)
    return False


def _check_bounds(field: str, value: Any) -> None:
    """Every number finite and not negative (counts, sizes, seconds), strings and lists bounded.

    The shape of a value, checked before anything runs; the core API checks
    each argument's own range (a timeout's upper bound, a memory size).
    """
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise ArgumentError(f"field {field!r} has {len(value)} items, more than {MAX_ITEMS}",
                                hint="send fewer items")
        for item in value:
            _check_bounds(field, item)
    elif isinstance(value, str) and len(value) > (limit := LONG_STRINGS.get(field, MAX_STRING)):
        raise ArgumentError(f"field {field!r} is {len(value)} characters long, more than {limit}",
                            hint="send a shorter value")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:  # Python's json reads NaN and Infinity; JSON has neither
            raise ArgumentError(f"field {field!r} must be a finite number, not negative (got {value})",
                                hint="send a number such as 30")


def schema(annotation: Any) -> dict[str, Any]:
    """A JSON schema for a parameter annotation (for the OpenAPI document and error hints)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [schema(a) for a in typing.get_args(annotation) if a is not type(None)]
        described = options[0] if len(options) == 1 else {"anyOf": options}
        return {**described, "nullable": True} if type(None) in typing.get_args(annotation) else described
    if origin is list:
        return {"type": "array", "items": schema(typing.get_args(annotation)[0])}
    return {bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"},
            str: {"type": "string"}, Path: {"type": "string"}}.get(annotation, {})
