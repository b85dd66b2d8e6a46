"""``minivisor host ...``: facts about this host."""

from __future__ import annotations

from . import JSON, command, hv, print_json


@command("host info", JSON)
def host_info(as_json: bool) -> None:
    info = hv().host_info()
    if as_json:
        return print_json(info)
    from . import output

    output.host_info(info)
