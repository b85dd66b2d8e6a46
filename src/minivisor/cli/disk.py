"""``minivisor disk ...``: virtual disk files (thin/thick, info, resize, convert)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import JsonFlag, group, hv, print_json

disk_app = group("disk", "Virtual disk files: create, inspect, grow, convert.")

DiskPath = Annotated[Path, typer.Argument(help="The disk file (inside the datastore).")]


@contextmanager
def progress_bar(what: str):
    """A rich progress bar fed with percentages (0..100), drawn from the first update on.

    Starting it lazily keeps bad input to one error line, with no half-drawn bar before it.
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    from ..text import printable

    # the description names a user's file: shown escaped, never read as markup
    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                   TimeRemainingColumn())
    task = None

    def update(percent: float) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(printable(what), total=100)
        bar.update(task, completed=percent)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


def show_disk(info: dict) -> None:
    from ..units import human_size
    from .output import key_values

    rows = [("file", info["file"]), ("format", info["format"]),
            ("virtual size", f"{human_size(info['virtual_size'])} ({info['virtual_size']} bytes)"),
            ("allocated", f"{human_size(info['allocated'])} ({'thin' if info['thin'] else 'fully allocated'})")]
    for depth, layer in enumerate(info["chain"][1:], 1):
        rows.append((f"parent {depth}", f"{layer['file']} ({layer['format']}, {human_size(layer['allocated'])} "
                                        "allocated)"))
    key_values(rows)


@disk_app.command("create")
def disk_create(path: DiskPath,
                size: Annotated[str, typer.Option("--size", "-s", help="Virtual size, e.g. 100G.")],
                thick: Annotated[bool, typer.Option("--thick/--thin", help="Allocate every byte now.")] = False,
                fmt: Annotated[Optional[str], typer.Option("--format", "-f",
                                                           help="qcow2, vmdk or raw [default: from the name].")] = None,
                as_json: JsonFlag = False) -> None:
    """Create an empty disk: thin (grows as the guest writes) or thick."""
    info = hv().disk_create(path, size, fmt=fmt, thick=thick)
    print_json(info) if as_json else show_disk(info)


@disk_app.command("info")
def disk_info(path: DiskPath, as_json: JsonFlag = False) -> None:
    """Virtual size, bytes really allocated, format and chain of parents."""
    info = hv().disk_info(path)
    print_json(info) if as_json else show_disk(info)


@disk_app.command("resize")
def disk_resize(path: DiskPath, size: Annotated[str, typer.Argument(help="New virtual size, e.g. 200G.")],
                as_json: JsonFlag = False) -> None:
    """Grow a disk (never shrinks)."""
    info = hv().disk_resize(path, size)
    print_json(info) if as_json else show_disk(info)


@disk_app.command("convert")
def disk_convert(source: DiskPath, target: Annotated[Path, typer.Argument(help="The new disk file.")],
                 fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="qcow2, vmdk or raw.")] = None,
                 thick: Annotated[bool, typer.Option("--thick/--thin")] = False,
                 as_json: JsonFlag = False) -> None:
    """Copy a disk (flattening its chain) into a new file and format, with a progress bar."""
    if as_json:
        return print_json(hv().disk_convert(source, target, fmt=fmt, thick=thick))
    with progress_bar(f"converting {source.name}") as update:
        info = hv().disk_convert(source, target, fmt=fmt, thick=thick, progress=update)
    show_disk(info)
