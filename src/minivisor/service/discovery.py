"""How the CLI and other clients on this host find the service of a datastore.

Files in ``<datastore>/.minivisor/``, owner-only:

- :data:`TOKEN_FILE`: the bearer token, made at the service's first start
  (:func:`minivisor.service.auth.ensure_token`) and kept across restarts;
- :data:`SERVICE_FILE`: the service's URL, pid and process start time while it
  runs (written by :class:`minivisor.service.server.Service`), trusted by
  :func:`minivisor.client.connect` only while that pid lives with that start time;
- :data:`LOCK_FILE`: held while a service runs, so there is one per datastore.

Stdlib only, and relative paths as strings (``root / SERVICE_FILE``), not pathlib: the CLI looks for
these on every command.
"""

from __future__ import annotations

__all__ = ["SERVICE_FILE", "TOKEN_FILE", "LOCK_FILE"]

SERVICE_FILE = ".minivisor/service.json"
TOKEN_FILE = ".minivisor/token"
LOCK_FILE = ".minivisor/service.lock"
