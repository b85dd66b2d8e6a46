"""``minivisor serve``: run the hypervisor service (REST API, events, supervision)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import app, datastore_root


@app.command("serve")
def serve(listen: Annotated[str, typer.Option(help="HOST:PORT to listen on (loopback unless you say otherwise).")]
          = "127.0.0.1:8700",
          autostart: Annotated[bool, typer.Option(help="Power on the VMs marked autostart.")] = True) -> None:
    """Run the service for the datastore: REST API, web UI, events, metrics, VMM supervision."""
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
