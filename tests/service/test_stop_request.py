"""A SIGTERM or SIGINT that comes before uvicorn serves (the service file written, the app still being built) stops
the service once it has started: the no-op handlers it had then lost it, and the service ran on (a test's stop
waited 20 s for it in a fresh full run)."""

from __future__ import annotations

import signal
import socket
import threading

from minivisor.service.server import _Server, _StopRequest


async def app(scope, receive, send):
    """An ASGI app with nothing to serve and a lifespan that starts at once."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


class NoBus:
    def close(self) -> None:
        pass


def serve_in_a_thread(stop: _StopRequest) -> threading.Thread:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    thread = threading.Thread(target=stop.serve, args=(_Server(app, NoBus()), [listener]), daemon=True)
    thread.start()
    return thread


def test_a_stop_asked_before_the_server_serves_ends_it_once_started():
    stop = _StopRequest()
    stop.request(signal.SIGTERM, None)  # the signal, before the server exists
    thread = serve_in_a_thread(stop)
    thread.join(timeout=10)
    assert not thread.is_alive(), "the server serves on after a stop asked before it started"


def test_a_stop_asked_while_it_serves_ends_it():
    stop = _StopRequest()
    thread = serve_in_a_thread(stop)
    thread.join(timeout=0.5)
    assert thread.is_alive()  # it serves until asked
    stop.request(signal.SIGTERM, None)
    thread.join(timeout=10)
    assert not thread.is_alive()
