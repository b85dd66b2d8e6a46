"""``minivisor image ...``: guest images built from Debian packages."""

from __future__ import annotations

from . import arg, command, progress, say


@command("image build", arg("kind", choices=("appliance",), metavar="KIND", help="What to build: appliance (the test guest)."),
         arg("--force", action="store_true", help="Rebuild even if cached."))
def image_build(kind: str, force: bool) -> None:
    from minivisor_appliance.build import build_appliance

    from .. import dirs

    say(build_appliance(dirs.cache_dir(), force=force, progress=progress))
