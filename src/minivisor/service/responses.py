"""What the service answers: a core API result as JSON, an error as an HTTP status and a JSON body.

:func:`http_status` is the REST API's one mapping from errors to statuses, and it
goes by class only: an error answers with the status of its nearest class in
:data:`HTTP_STATUS` (the most specific wins), so a new subclass answers like its
parent until it is given a row of its own. The client (:mod:`minivisor.client`)
reverses both: an error body's ``type`` names the error class, and each route's
``returns`` (:mod:`minivisor.service.routes`) the type of its result.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from pathlib import Path
from typing import Any

from starlette.responses import Response

from ..errors import (ArgumentError, AuthError, ClusterError, ConflictError, CrossSiteError, DiskError, GuestError,
                      HostError, HvError, ImageBuildError, InternalError, MethodNotAllowedError, NoSpaceError,
                      NotFoundError, PayloadTooLargeError, RequestError, RouteNotFoundError, SpecError, StateError,
                      VmmError, WrongHostError)
from ..records import Record, as_dict

__all__ = ["HTTP_STATUS", "http_status", "error_body", "error_response", "internal_error", "encode", "dumps",
           "json_response"]

HTTP_STATUS: dict[type[HvError], int] = {
    HvError: 500, InternalError: 500,  # a bug: every condition a user can meet has a class of its own below
    # the request
    RequestError: 400, ArgumentError: 400, AuthError: 401, RouteNotFoundError: 404, MethodNotAllowedError: 405,
    PayloadTooLargeError: 413, WrongHostError: 421, CrossSiteError: 403,
    # the datastore and its VMs
    NotFoundError: 404, ConflictError: 409, StateError: 409, SpecError: 422, DiskError: 422,
    # the host, the VMM and the guest
    HostError: 503, ImageBuildError: 503, NoSpaceError: 507, VmmError: 502, GuestError: 504,
    # the cluster (its store unreachable, its data malformed)
    ClusterError: 503,
}


def http_status(exc: HvError) -> int:
    """The HTTP status for an error: that of its nearest class in :data:`HTTP_STATUS` (the REST API's only mapping)."""
    return next(HTTP_STATUS[cls] for cls in type(exc).__mro__ if cls in HTTP_STATUS)


def error_body(exc: HvError) -> dict[str, Any]:
    """The JSON an error travels as; the client rebuilds the same class from ``type``."""
    return {"error": {"type": type(exc).__name__, "code": exc.code, "message": exc.message, "hint": exc.hint,
                      "exit_code": exc.exit_code, **({"details": details} if (details := exc.details()) else {})}}


def error_response(exc: HvError) -> Response:
    """The answer for an error. Refused before its body was read, a request closes its connection."""
    status = http_status(exc)
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status in (401, 413, 421):
        headers["Connection"] = "close"
    return Response(dumps(error_body(exc)), status, headers, media_type="application/json")


def internal_error(exc: Exception) -> InternalError:
    """What the client is told of an exception that is not an HvError (a bug; the log has the traceback)."""
    return InternalError(f"internal error: {type(exc).__name__}: {exc}")


def encode(result: Any) -> Any:
    """Plain JSON data for a core API result (the client rebuilds the typed object)."""
    if result is None:
        return {}
    if isinstance(result, str):
        return {"result": result}
    if isinstance(result, bytes):  # a screenshot's PNG
        return {"base64": base64.b64encode(result).decode()}
    if isinstance(result, (list, tuple)):
        return [encode(item) for item in result]
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if isinstance(result, Record):
        return as_dict(result)
    if dataclasses.is_dataclass(result):
        return dataclasses.asdict(result)
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(data: Any) -> bytes:
    """Compact JSON bytes for encoded data (enums, paths and sets included)."""
    return json.dumps(data, default=_json_default, separators=(",", ":")).encode()


def json_response(status: int, data: Any) -> Response:
    return Response(dumps(data), status, {"Cache-Control": "no-store"}, media_type="application/json")
