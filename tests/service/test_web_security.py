"""The web page's files, sessions and console tickets, tried as an attacker would (no VM needed unless marked)."""

from __future__ import annotations

import http.client
import json

from minivisor import Hypervisor
from minivisor.service.static import LIBRARIES, node_modules


def request(service, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None):
    conn = http.client.HTTPConnection(service.client.host, service.client.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def test_the_libraries_npm_installed_are_served_from_an_allow_list(service):
    assert (node_modules() / "@xterm/xterm/package.json").is_file(), "run npm ci (setup.sh does)"
    for path in ("/vendor/xterm/lib/xterm.js", "/vendor/novnc/core/rfb.js",
                 "/vendor/novnc/vendor/pako/lib/zlib/inflate.js", "/vendor/uplot/dist/uPlot.esm.js"):
        status, headers, body = request(service, "GET", path)  # no token: they hold no data
        assert status == 200 and headers["Content-Type"].startswith("text/javascript") and len(body) > 1000, path
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert set(LIBRARIES) == {"xterm", "xterm-fit", "novnc", "uplot"}
    # nothing outside the table: other files of the packages, other packages, escapes, the datastore
    for path in ("/vendor/novnc/package.json", "/vendor/xterm/lib/xterm.js.map", "/vendor/novnc/README.md",
                 "/vendor/novnc/../../package.json", "/vendor/novnc/core/../../../../pyproject.toml",
                 "/vendor/novnc/core/%2e%2e/%2e%2e/%2e%2e/package-lock.json", "/vendor/%2e%2e/.minivisor/token",
                 "/vendor/", "/vendor/uplot", "/ui/../auth.py", "/ui/auth.py", "/vendor//etc/passwd"):
        status, _, body = request(service, "GET", path)
        assert status == 404, (path, status)
        assert service.token.encode() not in body


def log_in(service, token: str | None = None, origin: str | None = None) -> tuple[int, str | None]:
    """POST /v1/session with a token: the status and the Set-Cookie header."""
    headers = {"Content-Type": "application/json", **({"Origin": origin} if origin else {})}
    status, answer, _ = request(service, "POST", "/v1/session", headers,
                                json.dumps({"token": token or service.token}).encode())
    return status, answer.get("Set-Cookie")


def session_cookie(service) -> str:
    status, set_cookie = log_in(service, origin=service.url)
    assert status == 200
    return set_cookie.split(";")[0]


def test_logging_in_gives_an_httponly_strict_random_cookie(service):
    status, set_cookie = log_in(service, origin=service.url)
    assert status == 200
    attributes = [part.strip() for part in set_cookie.split(";")]
    name, _, value = attributes[0].partition("=")
    assert name == f"minivisor-{service.client.port}" and len(value) >= 40 and value != service.token
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
    assert session_cookie(service) != attributes[0]  # each login its own session
    # the session reads the API, as the token does
    status, _, body = request(service, "GET", "/v1/vms", {"Cookie": attributes[0]})
    assert status == 200 and json.loads(body) == []


def test_a_wrong_token_gets_no_session(service):
    status, set_cookie = log_in(service, token="wrong" + service.token)
    assert status == 401 and set_cookie is None
    status, _, body = request(service, "POST", "/v1/session", {"Content-Type": "application/json"}, b'{"token": 1}')
    assert status == 400 and service.token.encode() not in body


def test_without_a_session_or_with_a_forged_one_nothing_is_answered(service):
    cookie_name = f"minivisor-{service.client.port}"
    for headers in ({}, {"Cookie": f"{cookie_name}=forged"}, {"Cookie": f"{cookie_name}={service.token}"},
                    {"Cookie": f"{cookie_name}="}, {"Cookie": "minivisor-1=" + session_cookie(service).split("=")[1]}):
        for path in ("/v1/vms", "/v1/session", "/v1/events", "/v1/host"):
            status, _, body = request(service, "GET", path, headers)
            assert status == 401, (headers, path)
            assert b"vms" not in body.lower().replace(b"/v1/vms", b"")


def test_a_logged_out_session_is_dead(service):
    cookie = session_cookie(service)
    own = {"Cookie": cookie, "Origin": service.url, "X-Minivisor-CSRF": "1"}
    assert request(service, "DELETE", "/v1/session", own)[0] == 200
    assert request(service, "GET", "/v1/vms", {"Cookie": cookie})[0] == 401


def test_a_change_on_the_cookie_from_another_site_is_refused(service):
    Hypervisor(service.root).create_vm("vm1", disk_size="16M", memory_mib=64, network="none")
    cookie = session_cookie(service)
    path = "/v1/vms/vm1/autostart"
    for headers in ({"Origin": "http://evil.example", "X-Minivisor-CSRF": "1"},  # another site's page
                    {"Origin": "null", "X-Minivisor-CSRF": "1"},  # a sandboxed frame
                    {"Origin": service.url.replace("127.0.0.1", "localhost"), "X-Minivisor-CSRF": "1"},
                    {"X-Minivisor-CSRF": "1"},  # no Origin at all
                    {"Origin": service.url}):  # a form posted from our origin cannot add the header
        status, _, answer = request(service, "PUT", path, {"Cookie": cookie, "Content-Type": "application/json",
                                                          **headers}, b'{"enabled": true}')
        assert status == 403, headers
        assert json.loads(answer)["error"]["type"] == "CrossSiteError"
        assert not service.client.get_vm("vm1").autostart
    # a login from another site's page is refused too (it would plant its session)
    assert log_in(service, origin="http://evil.example")[0] == 403
    # from the page itself it works
    status, _, answer = request(service, "PUT", path, {"Cookie": cookie, "Content-Type": "application/json",
                                                      "Origin": service.url, "X-Minivisor-CSRF": "1"},
                                b'{"enabled": true}')
    assert status == 200 and service.client.get_vm("vm1").autostart


def test_the_token_still_works_without_a_session_or_origin(service):
    status, _, _ = request(service, "POST", "/v1/vms", {"Authorization": f"Bearer {service.token}",
                                                        "Content-Type": "application/json"},
                           b'{"name": "t", "disk_size": "16M", "memory_mib": 64, "network": "none"}')
    assert status == 201 and service.client.get_vm("t").name == "t"


def test_the_page_runs_only_its_own_scripts(service):
    status, headers, html = request(service, "GET", "/")
    assert status == 200
    policy = headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["connect-src"] == "'self'"
    assert "frame-ancestors 'none'" in policy and headers["X-Frame-Options"] == "DENY"
    assert b"<script>" not in html and b"<script " in html and b"onclick" not in html  # no inline script
    for name in ("main.js", "api.js", "dom.js"):
        status, _, module = request(service, "GET", "/ui/" + name)
        assert status == 200 and b"innerHTML" not in module and b"eval(" not in module
