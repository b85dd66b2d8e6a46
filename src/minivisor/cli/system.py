"""``minivisor host|image|datastore ...`` and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import JsonFlag, app, group, hv, print_json, progress, say

host_app = group("host", "Facts about this host.")
image_app = group("image", "Build guest images.")
datastore_app = group("datastore", "The datastore folder and its policy.")


@host_app.command("info")
def host_info(as_json: JsonFlag = False) -> None:
    """CPUs, memory, QEMU, and which accelerator VMs get (and why)."""
    info = hv().host_info()
    if as_json:
        return print_json(info.to_dict())
    from . import output

    output.host_info(info)


@image_app.command("build")
def image_build(kind: Annotated[str, typer.Argument(help="What to build: appliance.")],
                force: Annotated[bool, typer.Option(help="Rebuild even if cached.")] = False) -> None:
    """Build a guest image from Debian packages (cached); prints its path."""
    from .. import dirs
    from minivisor_appliance.build import build_appliance
    from ..errors import NotFoundError
    from ..text import excerpt

    if kind != "appliance":
        raise NotFoundError(f"no image kind {excerpt(kind)}", hint="the buildable image is: appliance")
    say(build_appliance(dirs.cache_dir(), force=force, progress=progress))


@datastore_app.command("info")
def datastore_info(as_json: JsonFlag = False) -> None:
    """Where the datastore is and which host folders specfiles may name."""
    data = hv(direct=True).datastore_info()
    if as_json:
        return print_json(data)
    for key, value in data.items():
        say(f"{key:14} {value}")


@datastore_app.command("allow-path")
def datastore_allow(path: Annotated[Path, typer.Argument(help="A host folder.")]) -> None:
    """Let specfiles name files in a host folder outside the datastore."""
    hv(direct=True).allow_path(path)


@app.command("demo")
def demo() -> None:
    """Build the appliance, boot a VM from a specfile and show what the guest sees."""
    from .demo import run_demo

    run_demo(hv(direct=True))


