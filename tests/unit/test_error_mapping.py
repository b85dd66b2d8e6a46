"""Every error class: its HTTP status (by class, the most specific wins), its exit code, its way back through the client."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

from minivisor import errors
from minivisor.client import _error
from minivisor.errors import HvError
from minivisor.service.responses import HTTP_STATUS, dumps, error_body, http_status

README = Path(__file__).parents[2] / "README.md"
CLASSES = [getattr(errors, name) for name in errors.__all__ if inspect.isclass(getattr(errors, name))]
BUGS = {HvError, errors.InternalError}  # what no user condition raises: the root, and a bug caught by the service


def exit_codes_in_readme() -> set[int]:
    """The exit codes README's table lists (the rows of the table headed "| exit | meaning |")."""
    table = README.read_text().split("| exit | meaning |", 1)[1].split("\n\n", 1)[0]
    return {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}


def test_every_error_class_in_the_module_is_exported():
    """What is not in __all__ the client cannot rebuild, and this file would not check."""
    defined = {cls for _, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, HvError) and cls.__module__ == errors.__name__}
    assert defined == set(CLASSES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_each_class_is_one_documented_condition(cls):
    assert "__doc__" in vars(cls) and cls.__doc__.strip(), "a docstring that says when it is raised"
    assert "code" in vars(cls) and re.fullmatch(r"[a-z]+(-[a-z]+)*", cls.code), "a kebab-case code of its own"
    assert isinstance(cls.exit_code, int) and 1 <= cls.exit_code <= 125, "an exit code a shell can tell from a signal"


def test_codes_are_unique():
    codes = [cls.code for cls in CLASSES]
    assert len(codes) == len(set(codes)), sorted(code for code in codes if codes.count(code) > 1)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_condition_has_an_http_status_of_its_own(cls):
    status = http_status(cls("x"))
    if cls in BUGS:
        assert status == 500
    else:
        assert status != 500 and 400 <= status < 600, f"{cls.__name__} falls through to {status}"


@pytest.mark.parametrize(("cls", "status"), [
    (errors.PayloadTooLargeError, 413), (errors.MethodNotAllowedError, 405), (errors.RouteNotFoundError, 404),
    (errors.WrongHostError, 421), (errors.RequestError, 400), (errors.AuthError, 401), (errors.ArgumentError, 400),
    (errors.NotFoundError, 404), (errors.LockError, 409), (errors.StateError, 409), (errors.ConflictError, 409),
    (errors.PathError, 422), (errors.SpecError, 422), (errors.DiskError, 422), (errors.NoSpaceError, 507),
    (errors.HostError, 503), (errors.QmpError, 502), (errors.VmmError, 502), (errors.GuestError, 504),
])
def test_statuses_the_api_documents(cls, status):
    assert http_status(cls("x")) == status


def test_the_most_specific_class_wins_for_a_subclass_the_table_does_not_name():
    class InsufficientMemory(errors.HostError):
        code = "insufficient-memory"

    class Full(errors.NoSpaceError):
        code = "full"

    class Busy(errors.LockError):
        code = "busy"

    assert (http_status(InsufficientMemory("x")), http_status(Full("x")), http_status(Busy("x"))) == (503, 507, 409)
    assert not {InsufficientMemory, Full, Busy} & set(HTTP_STATUS)


def test_the_status_follows_the_class_not_the_code():
    error = errors.NotFoundError("x")
    error.code = "too-large"  # an instance's code says nothing to the mapping
    assert http_status(error) == 404


def test_readme_lists_every_exit_code():
    assert {cls.exit_code for cls in CLASSES} <= exit_codes_in_readme()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_the_client_rebuilds_the_same_error_from_the_answer(cls):
    sent = cls("what went wrong", hint="what to do")
    received = _error(http_status(sent), json.loads(dumps(error_body(sent))))
    assert type(received) is cls
    assert (received.code, received.message, received.hint, received.exit_code) == \
           (sent.code, sent.message, sent.hint, sent.exit_code)


@pytest.mark.parametrize("name", ["is_out_of_space", "os", "errno", "Exception", "SystemExit", "__builtins__", None, 7])
def test_a_type_that_is_not_an_error_class_becomes_a_plain_hverror(name):
    body = {"error": {"type": name, "code": "x", "message": "m", "hint": None, "exit_code": 3}}
    received = _error(400, body)
    assert type(received) is HvError and received.exit_code == 3
