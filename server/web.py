"""Plain HTTP GETs on the WebSocket port: the JS client, the client config, the admin console, a static folder."""

from __future__ import annotations

import json
import mimetypes
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .schemas import bundled_dir

__all__ = ["CONSOLE_HEADERS", "Page", "console", "route"]

Page = tuple[int, str, bytes]  # status, content type, body

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".ts": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
}
_ENTRY = b'export * from "/montybase/index.js";\n'
_NOT_FOUND: Page = (404, "text/plain; charset=utf-8", b"Not found\n")
# Storage and settings files (server/storage.py names them): journals, the lock, a snapshot being
# written, montybase.json. The server also refuses to start with its own config or storage in the folder.
_PRIVATE = re.compile(r".*\.(\d+\.journal|lock|tmp|last-backup)|montybase\.json(\.previous)?")


def _private(path: Path) -> bool:
    """A file that is never served: storage, settings, or a snapshot (a file with a lock beside it)."""
    return _PRIVATE.fullmatch(path.name) is not None or path.with_name(path.name + ".lock").exists()


def _file(root: Path, relative: str) -> Page:
    """A file under `root`, never outside it, never a listing, a dotfile or a storage file."""
    parts = [part for part in relative.split("/") if part]
    if any(part.startswith(".") or "\\" in part or "\0" in part for part in parts):
        return _NOT_FOUND
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root):
        return _NOT_FOUND
    if path.is_dir():
        path = path / "index.html"
    if not path.is_file() or _private(path):
        return _NOT_FOUND
    content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return 200, content_type, path.read_bytes()


# The console's pages run no inline script and load nothing from elsewhere, and no other site may
# frame them (clickjacking an admin) or learn their address from a Referer.
CONSOLE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self' ws: wss:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def console(target: str) -> tuple[Page, dict[str, str]]:
    """`/admin/…`: the admin console's files (console/), with CONSOLE_HEADERS; `/admin` moves to
    `/admin/` (its modules are addressed relative to it)."""
    path = unquote(urlsplit(target).path)
    if path == "/admin":
        return (308, "text/plain; charset=utf-8", b"/admin/\n"), {**CONSOLE_HEADERS, "Location": "/admin/"}
    return _file(bundled_dir("console", "index.html"), path[len("/admin/"):]), dict(CONSOLE_HEADERS)


def route(target: str, host: str | None, client_config: dict[str, Any], static: Path | None, tls: bool) -> Page:
    """What a GET of `target` answers.

    - `/montybase.js`: the JS client's entry (`import { Montybase, doc } from "/montybase.js"`);
      `/montybase/<file>`: its modules.
    - `/client-config.json`: the client config, its endpoint being `publicEndpoint` when the
      config sets one (in `client_config`), else this server as the browser reached it (the
      client key is public by design; the admin key is never in it).
    - anything else: the static folder, if the config names one (`/` serves index.html).
    """
    path = unquote(urlsplit(target).path)
    if path == "/montybase.js":
        return 200, _TYPES[".js"], _ENTRY
    if path.startswith("/montybase/"):
        return _file(bundled_dir("js_client", "index.js"), path[len("/montybase/"):])
    if path == "/client-config.json":
        endpoint = client_config.get("endpoint") or (f"{'wss' if tls else 'ws'}://{host}" if host else None)
        return 200, _TYPES[".json"], json.dumps({**client_config, "endpoint": endpoint}, indent=2).encode()
    if static is not None:
        return _file(static, path)
    return _NOT_FOUND
