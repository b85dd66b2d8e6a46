"""The hypervisor service (``minivisor serve``): a REST API, server-sent events and metrics over the core API.

A thin layer: every route is a row of :data:`routes.OPERATIONS` dispatched to
the same :class:`~minivisor.core.hypervisor.Hypervisor` method the CLI calls,
and every error is an :class:`~minivisor.errors.HvError` whose HTTP status
:func:`responses.http_status` alone chooses. It is a Starlette application on
uvicorn (HTTP/1.1 through h11). A request passes, in order: the connection
guard (:mod:`connections`), the Host check and the token (:mod:`auth`), the
route (:mod:`app`), the values (their request model, :mod:`models`), then the
core call (:mod:`dispatch`).

The modules, each one concept:

- :mod:`routes`: the REST mapping, one row per core method (stdlib; the client reads it too);
- :mod:`discovery`: the files by which clients find a running service (stdlib; the client reads them);
- :mod:`on_demand`: the service a command starts for the commands after it when none runs (stdlib);
- :mod:`server`: the service process (:class:`server.Service`): lock, token, socket, ``service.json``,
  uvicorn, start and stop;
- :mod:`connections`: the limits uvicorn lacks (a deadline per request, a cap on connections);
- :mod:`auth`: the Host check against DNS rebinding, the bearer token, the web session and its CSRF check;
- :mod:`sessions`: the web page's sessions and the single-use tickets of console websockets;
- :mod:`consoles`: the console websockets, bridged to a VM's serial console and VNC UNIX sockets;
- :mod:`static`: the web page's files and its npm libraries, served from a table made at start-up;
- :mod:`app`: the Starlette application: routes, request bodies, event streams, uploads, the web page;
- :mod:`models`: the typed request and answer models (pydantic), and a request's values checked by its model;
- :mod:`dispatch`: core calls on worker threads, a pool of Hypervisors, one mutation per VM at a time;
- :mod:`responses`: results as JSON, errors as an HTTP status and a JSON body;
- :mod:`openapi`: the OpenAPI document, from the route table and the models;
- :mod:`bus`: the event bus behind ``/v1/events``;
- :mod:`tasks`: the task list (``/v1/tasks``): running and recent operations, their progress and errors;
- :mod:`supervisor`: a pidfd per VMM, reattach after a restart, half-started VMMs killed, autostart;
- :mod:`metrics`: per-VM and host metrics, as JSON and Prometheus text.

Only ``minivisor serve`` imports the modules that load Starlette, uvicorn, pydantic
or asyncio: the CLI talks to the service through :mod:`minivisor.client`, which
needs only :mod:`routes` and :mod:`discovery`.
"""
