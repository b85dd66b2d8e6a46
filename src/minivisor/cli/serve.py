"""``minivisor serve``: run the hypervisor service (REST API, events, supervision)."""

from __future__ import annotations

import sys

from . import arg, command, datastore_root


@command("serve", arg("--listen", default="127.0.0.1:8700", metavar="HOST:PORT",
                      help="Where to listen (loopback unless you say otherwise) [default: 127.0.0.1:8700]."),
         arg("--autostart", action="boolean_optional", default=True,
             help="Power on the VMs marked autostart [default: yes]."))
def serve(listen: str, autostart: bool) -> None:
    import ipaddress
    import logging

    from ..service.discovery import TOKEN_FILE
    from ..service.server import Service  # Starlette and uvicorn: only this command loads them

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service(datastore_root(), listen, autostart=autostart)
    host = listen.rpartition(":")[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        sys.stderr.write(f"warning: listening on {host}, not on loopback: anyone who can reach it and has "
                         "the token controls these VMs\n")
    sys.stderr.write(f"minivisor service for {service.root} at {service.url} "
                     f"(token in {service.root / TOKEN_FILE}); running VMs keep running when it stops\n")
    sys.stderr.flush()
    service.serve_forever()
