"""The page's files: its own (``service/web/``) and the third-party libraries npm installed (``node_modules``).

Both are served from a table made once at start-up (:class:`StaticFiles`): a
URL names a file only if it is in the table, so no request can name a path of
its own (no ``..``, no symlink out, no file that appeared later). The
libraries come from the repository's ``package-lock.json`` through ``npm ci``
(``setup.sh``); nothing of theirs is committed and nothing comes from a CDN.
They hold no data, so they need no token (:data:`PUBLIC_PREFIXES`).
"""

from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

__all__ = ["StaticFiles", "Asset", "LIBRARIES", "PUBLIC_PREFIXES", "PAGE_PREFIX", "VENDOR_PREFIX", "node_modules"]

PAGE_PREFIX = "/ui/"  # the page's own modules and styles
VENDOR_PREFIX = "/vendor/"  # the libraries, as /vendor/<library>/<path inside its package>
PUBLIC_PREFIXES = (PAGE_PREFIX, VENDOR_PREFIX)
SERVED_SUFFIXES = (".js", ".css", ".html", ".svg")  # source maps, READMEs and package.json are not served

# library -> (its npm package, the folders of it the page loads)
LIBRARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "xterm": ("@xterm/xterm", ("lib", "css")),
    "xterm-fit": ("@xterm/addon-fit", ("lib",)),
    "novnc": ("@novnc/novnc", ("core", "vendor/pako/lib")),  # ES modules: rfb.js imports the rest
    "uplot": ("uplot", ("dist",)),
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str


def node_modules() -> Path:
    """Where npm installed the libraries: ``$MINIVISOR_NODE_MODULES``, else the repository's ``node_modules``."""
    configured = os.environ.get("MINIVISOR_NODE_MODULES")
    return Path(configured) if configured else Path(__file__).resolve().parents[3] / "node_modules"


class StaticFiles:
    """Every file the page may load, read at start-up: URL path -> bytes and media type."""

    def __init__(self, modules: Path | None = None) -> None:
        self.assets: dict[str, Asset] = {}
        page = files("minivisor.service").joinpath("web")
        for entry in page.iterdir():
            if entry.name.endswith(SERVED_SUFFIXES):
                self.assets[PAGE_PREFIX + entry.name] = _asset(entry.name, entry.read_bytes())
        modules = modules or node_modules()
        self.missing = [library for library, (package, folders) in LIBRARIES.items()
                        if not self._add_library(library, modules / package, folders)]

    def get(self, path: str) -> Asset | None:
        return self.assets.get(path)

    def _add_library(self, library: str, package: Path, folders: tuple[str, ...]) -> bool:
        """Add a library's files; False if npm has not installed it."""
        root = package.resolve()
        if not root.is_dir():
            return False
        for folder in folders:
            for path in sorted((root / folder).rglob("*")):
                real = path.resolve()
                if path.is_file() and path.name.endswith(SERVED_SUFFIXES) and real.is_relative_to(root):
                    url = f"{VENDOR_PREFIX}{library}/{path.relative_to(root).as_posix()}"
                    self.assets[url] = _asset(path.name, real.read_bytes())
        return True


def _asset(name: str, body: bytes) -> Asset:
    kind = "text/javascript" if name.endswith(".js") else (mimetypes.guess_type(name)[0] or "text/plain")
    return Asset(body, kind + "; charset=utf-8" if kind.startswith("text/") else kind)
