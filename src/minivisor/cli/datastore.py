"""``minivisor datastore ...``: the datastore folder and the host folders its specfiles may name."""

from __future__ import annotations

from pathlib import Path

from . import JSON, arg, command, hv, print_json


@command("datastore info", JSON)
def datastore_info(as_json: bool) -> None:
    data = hv(direct=True).datastore_info()
    if as_json:
        return print_json(data)
    from .output import key_values

    key_values([(key, ", ".join(value) if isinstance(value, list) else value) for key, value in data.items()])


@command("datastore allow-path", arg("path", type=Path, metavar="FOLDER", help="A host folder."))
def datastore_allow(path: Path) -> None:
    hv(direct=True).allow_path(path)
