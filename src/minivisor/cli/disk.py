"""``minivisor disk ...``: virtual disk files (thin/thick, info, resize, convert)."""

from __future__ import annotations

from pathlib import Path

from . import JSON, arg, command, hv, print_json

DISK = arg("path", type=Path, metavar="FILE", help="The disk file (inside the datastore).")
FORMAT = arg("--format", "-f", dest="fmt", metavar="FORMAT", help="qcow2, vmdk or raw [default: from the name].")
THICK = (arg("--thick", action="store_true", default=False, help="Allocate every byte now."),
         arg("--thin", dest="thick", action="store_false", default=False,
             help="Allocate as the guest writes (the default)."))


def show(info: dict, as_json: bool) -> None:
    from .output import disk_details

    print_json(info) if as_json else disk_details(info)


@command("disk create", DISK, arg("--size", "-s", required=True, help="Virtual size, e.g. 100G."), *THICK, FORMAT,
         JSON)
def disk_create(path: Path, size: str, thick: bool, fmt: str | None, as_json: bool) -> None:
    show(hv().disk_create(path, size, fmt=fmt, thick=thick), as_json)


@command("disk info", DISK, JSON)
def disk_info(path: Path, as_json: bool) -> None:
    show(hv().disk_info(path), as_json)


@command("disk resize", DISK, arg("size", metavar="SIZE", help="New virtual size, e.g. 200G."), JSON)
def disk_resize(path: Path, size: str, as_json: bool) -> None:
    show(hv().disk_resize(path, size), as_json)


@command("disk convert", arg("source", type=Path, metavar="SOURCE", help="The disk file to copy."),
         arg("target", type=Path, metavar="TARGET", help="The new disk file."), FORMAT, *THICK, JSON)
def disk_convert(source: Path, target: Path, fmt: str | None, thick: bool, as_json: bool) -> None:
    from .output import ProgressBar

    with ProgressBar(f"converting {source.name}") as bar:
        info = hv().disk_convert(source, target, fmt=fmt, thick=thick, progress=bar)
    show(info, as_json)
