"""The ``minivisor`` command: a thin layer over :class:`minivisor.core.hypervisor.Hypervisor`.

One module per command group (``vm``, ``system``...), all sharing :data:`app`
and the helpers here.

Every error is an :class:`~minivisor.errors.HvError` turned, in :func:`main`
only, into one line on stderr and the error's exit code. Set MINIVISOR_DEBUG=1
to see tracebacks of unexpected failures.

Every human-readable line goes through :func:`say`, :func:`warn`,
:func:`progress`, :func:`main` or :mod:`minivisor.cli.output`, which escape control
characters: names and values from specfiles and guests never drive the terminal.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import HvError
from ..text import clip, printable

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="minivisor: run VMware-style VMs (.vmx) on QEMU/KVM.")

_state: dict[str, object] = {}

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Name = Annotated[str, typer.Argument(help="The VM's name.")]


@app.callback()
def _options(datastore: Annotated[Optional[Path], typer.Option(
        "--datastore", "-d", envvar="MINIVISOR_DATASTORE",
        help="The datastore folder [default: ./datastore].")] = None) -> None:
    _state["datastore"] = datastore


def group(name: str, help: str) -> typer.Typer:
    """A command group (``minivisor NAME ...``) registered on the main app."""
    sub = typer.Typer(no_args_is_help=True, help=help)
    app.add_typer(sub, name=name)
    return sub


def datastore_root() -> Path:
    from ..datastore.store import default_root

    return Path(_state.get("datastore") or default_root())  # type: ignore[arg-type]


def hv(*, direct: bool = False):
    """The core API: the running service's client when there is one, else the datastore itself.

    Both give the same results, errors and exit codes. MINIVISOR_DIRECT=1 (or
    ``direct``) bypasses the service; the VM locks keep the two from racing.
    """
    if not direct and not os.environ.get("MINIVISOR_DIRECT"):
        if "client" not in _state:
            root = datastore_root()
            client = None
            from ..service.discovery import SERVICE_FILE

            if (root / SERVICE_FILE).exists():  # import http.client only then
                from ..client import connect

                client = connect(root)
            _state["client"] = client
        if _state["client"] is not None:
            return _state["client"]
    from ..core.hypervisor import Hypervisor

    if "hv" not in _state:
        _state["hv"] = Hypervisor(_state.get("datastore"))  # type: ignore[arg-type]
    return _state["hv"]


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def say(line: str) -> None:
    """One line of human-readable output on stdout."""
    sys.stdout.write(printable(line) + "\n")


def warn(lines) -> None:
    for line in lines:
        sys.stderr.write(f"warning: {printable(line)}\n")


def progress(line: str) -> None:
    sys.stderr.write(f"  {printable(line)}\n")


def main() -> None:
    """Entry point: run the CLI, turning errors into one line and an exit code.

    Usage errors and exits are handled by typer (standalone mode); everything
    minivisor raises arrives here.
    """
    try:
        app()
    except HvError as exc:
        sys.stderr.write(f"error: {printable(exc.one_line())}\n")
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: users never see a traceback
        if os.environ.get("MINIVISOR_DEBUG"):
            raise
        detail = printable(" ".join(clip(str(exc)).split()))
        sys.stderr.write(f"internal error: {type(exc).__name__}: {detail} (set MINIVISOR_DEBUG=1 for details)\n")
        sys.exit(1)


# Command groups register themselves on import (order = order in --help).
from . import vm, system, disk, snapshot, service  # noqa: E402,F401
