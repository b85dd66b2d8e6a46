"""Connections that hold the service without sending a request: idle, silent, slowloris.

Each test runs a real `minivisor serve` and talks to it over raw TCP on loopback.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import struct
import time

import pytest
from service.conftest import datastore, service, small_vm  # noqa: F401 - the fixtures of tests/service

from minivisor import Hypervisor
from minivisor.service.connections import KEEP_ALIVE, MAX_CONNECTIONS, REQUEST_TIMEOUT

IDLE = 2000
BOUND = 2 * max(REQUEST_TIMEOUT, KEEP_ALIVE) + 10  # seconds: a connection still open after this is held for ever


@pytest.fixture
def descriptors():
    """``descriptors(n)``: room in this process for n sockets (and the rest of the test)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def room(count: int) -> None:
        wanted = count + 512
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the hard limit of open files ({hard}) is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))

    yield room
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def address(service) -> tuple[str, int]:
    return service.client.host, service.client.port


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed it: reading gives EOF or a reset (it never sent a byte of data)."""
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        return True
    assert data in (b"",), f"the service answered a connection that sent no request: {data[:200]!r}"
    return True


def wait_closed_by_server(socks: list[socket.socket], bound: float) -> list[socket.socket]:
    """Wait until the server has closed each socket; return those still open after ``bound`` seconds."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + bound
    while by_fd and time.monotonic() < deadline:
        for fd, _ in poller.poll(500):
            if closed_by_server(by_fd[fd]):
                poller.unregister(fd)
                by_fd.pop(fd).close()
    return list(by_fd.values())


def reset(sock: socket.socket) -> None:
    """Go away abruptly, as a client that crashed or lost its network would (RST, not FIN)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def no_tracebacks(service) -> None:
    log = (service.root.parent / "service.log").read_text(errors="replace")
    assert "Traceback" not in log and "Exception in" not in log, log[-3000:]


def test_idle_connections_are_closed_and_the_service_answers_meanwhile(service, descriptors):
    descriptors(IDLE)
    small_vm(Hypervisor(service.root), "vm1")
    silent = [socket.create_connection(address(service)) for _ in range(IDLE)]
    kept_alive = []  # made one request, then went quiet
    for _ in range(5):
        sock = socket.create_connection(address(service))
        host, port = address(service)
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        kept_alive.append(sock)
    # meanwhile, a client with the token is served as usual
    assert [vm.name for vm in service.client.list_vms()] == ["vm1"]
    assert service.client.get_vm("vm1").state.value == "poweredOff"
    for sock in kept_alive:  # read the page they asked for, so only the server's close remains
        sock.settimeout(30)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.settimeout(None)
    for sock in silent[:IDLE // 4]:  # some clients go away by themselves, abruptly
        reset(sock)
    left = wait_closed_by_server(silent[IDLE // 4:], BOUND)
    left += wait_closed_by_server(kept_alive, BOUND)
    assert not left, f"{len(left)} idle connections still open after {BOUND:.0f} s"
    assert service.client.get_vm("vm1").name == "vm1"  # still serving
    no_tracebacks(service)


def test_a_request_trickled_in_a_byte_at_a_time_is_cut_off(service):
    """Slowloris: the head (or the body) arrives so slowly that it would hold the connection for ever."""
    host, port = address(service)
    slow_head = socket.create_connection((host, port))
    slow_head.sendall(f"GET /v1/vms HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
    body = json.dumps({"name": "slowvm", "disk_size": "16M"}).encode().ljust(200)  # 100 s at 2 bytes a second
    slow_body = socket.create_connection((host, port))
    slow_body.sendall(f"POST /v1/vms HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {service.token}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    pieces = {slow_head: iter(b"X-Slow-%d: 1\r\n" % i for i in range(10**6)),  # h11 takes 16 KiB of head: 20 min
              slow_body: iter(body[i:i + 1] for i in range(len(body)))}
    cut_off: set[socket.socket] = set()
    deadline = time.monotonic() + BOUND
    while len(cut_off) < len(pieces) and time.monotonic() < deadline:
        for sock, rest in pieces.items():
            if sock not in cut_off and not trickle(sock, next(rest)):
                cut_off.add(sock)
        time.sleep(0.5)
    assert cut_off == set(pieces), f"a trickled request was still being read after {BOUND:.0f} s"
    assert service.client.list_vms() == []  # the request cut off did nothing
    no_tracebacks(service)


def trickle(sock: socket.socket, piece: bytes) -> bool:
    """Send one more piece; False once the server has closed the connection."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if poller.poll(0) and closed_by_server(sock):
        return False
    try:
        sock.sendall(piece)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def test_connections_beyond_the_cap_are_refused_at_once_not_held(service, descriptors):
    descriptors(MAX_CONNECTIONS + 64)  # the service caps at MAX_CONNECTIONS, or fewer if it has fewer descriptors
    opened = [socket.create_connection(address(service)) for _ in range(MAX_CONNECTIONS + 16)]
    try:
        poller = select.poll()
        by_fd = {sock.fileno(): sock for sock in opened}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        answers = []
        deadline = time.monotonic() + BOUND
        while len(answers) < 16 and time.monotonic() < deadline:
            for fd, _ in poller.poll(500):
                poller.unregister(fd)
                try:
                    answer = by_fd[fd].recv(65536)
                except ConnectionResetError:
                    continue
                if answer:  # (b"": a silent connection the service closed in time, which is fine too)
                    answers.append(answer)
        assert len(answers) >= 16, "connections beyond the cap were held open"
        for answer in answers:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ") and b"connection: close" in head.lower()
            assert json.loads(body)["error"]["code"] == "host-error"
    finally:
        for sock in opened:
            reset(sock)
    assert service.client.list_vms() == []  # room again once they are gone
    no_tracebacks(service)


@pytest.mark.qemu
def test_clients_that_go_away_mid_request_leave_no_traceback(service):
    small_vm(Hypervisor(service.root), "vm1")
    host, port = address(service)
    head = f"Host: {host}:{port}\r\nAuthorization: Bearer {service.token}\r\n"
    requests = [f"GET /v1/events HTTP/1.1\r\n{head}\r\n",  # an event stream, then gone
                f"POST /v1/vms/vm1/start HTTP/1.1\r\n{head}Content-Length: 2\r\n\r\n{{}}",  # gone before the answer
                f"POST /v1/vms HTTP/1.1\r\n{head}Content-Length: 100\r\n\r\n{{\"na",  # gone mid-body
                "GET /v1/vms HTTP/1.1\r\nHo"]  # gone mid-head
    for text in requests:
        sock = socket.create_connection((host, port))
        sock.sendall(text.encode())
        time.sleep(0.2)
        reset(sock)
    deadline = time.monotonic() + 30
    while service.client.get_vm("vm1").state.value != "running":  # the power-on went on without its client
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert [vm.name for vm in service.client.list_vms()] == ["vm1"]
    no_tracebacks(service)
