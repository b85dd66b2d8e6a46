"""``minivisor serve``: run the hypervisor service (REST API, events, supervision)."""

from __future__ import annotations

import sys

from . import arg, command, datastore_root


@command("serve", arg("--listen", default="127.0.0.1:8700", metavar="HOST:PORT",
                      help="Where to listen (loopback unless you say otherwise) [default: 127.0.0.1:8700]."),
         arg("--autostart", action="boolean_optional", default=True,
             help="Power on the VMs marked autostart [default: yes]."),
         arg("--on-demand", action="store_true",
             help="What commands start for the ones after them when no service runs: a loopback port of its "
                  "own, no autostart, never a cluster member, gone after 2 idle minutes (replaced by a plain "
                  "serve)."))
def serve(listen: str, autostart: bool, on_demand: bool) -> None:
    import ipaddress
    import logging

    from ..service.discovery import LOCK_FILE, TOKEN_FILE

    lock = None
    if on_demand:  # the lock first: a second one started meanwhile ends before it imports the service
        from ..locks import try_lock

        try:
            lock = try_lock(datastore_root() / LOCK_FILE)
        except OSError:
            pass  # no datastore there yet: the service makes it, then takes the lock
        else:
            if lock is None:
                return
    from ..service.server import Service  # Starlette and uvicorn: only this command loads them

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if on_demand:
        listen = "127.0.0.1:0"
    service = Service(datastore_root(), listen, autostart=autostart, on_demand=on_demand, lock=lock)
    host = listen.rpartition(":")[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        sys.stderr.write(f"warning: listening on {host}, not on loopback: anyone who can reach it and has "
                         "the token controls these VMs\n")
    sys.stderr.write(f"minivisor service{' (on demand)' if on_demand else ''} for {service.root} at "
                     f"{service.url} (token in {service.root / TOKEN_FILE}); running VMs keep running when it "
                     "stops\n")
    sys.stderr.flush()
    service.serve_forever()
