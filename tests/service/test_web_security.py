"""The web page's files, sessions and console tickets, tried as an attacker would (no VM needed unless marked)."""

from __future__ import annotations

import http.client

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
