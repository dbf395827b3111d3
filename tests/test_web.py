"""Plain HTTP on the WebSocket port: the JS client, the client config, a static folder (server/web.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from conftest import NO_SERVER, Served
from server.web import console, route

OPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open  # 127.0.0.1 only, never a proxy
# As the server passes it: no endpoint unless the config sets publicEndpoint.
CONFIG = {"projectName": "p", "apiKey": "mb-public-key-123456", "endpoint": "", "serverKey": "AAA"}


@pytest.fixture
def site(tmp_path):
    (tmp_path / "site" / "sub").mkdir(parents=True)
    (tmp_path / "site" / "index.html").write_text("<h1>home</h1>")
    (tmp_path / "site" / "app.js").write_text("export const x = 1;")
    (tmp_path / "site" / "sub" / "page.css").write_text("body {}")
    (tmp_path / "site" / ".env").write_text("SECRET=1")
    for name in ("db.json", "db.json.lock", "db.json.3.journal", "db.json.tmp", "montybase.json",
                 "montybase.json.previous", "db.json.last-backup"):
        (tmp_path / "site" / name).write_text("SECRET storage")
    (tmp_path / "secret.txt").write_text("outside")
    (tmp_path / "site" / "link").symlink_to(tmp_path / "secret.txt")
    return tmp_path / "site"


@NO_SERVER
def test_the_js_client_and_its_modules_are_served():
    status, content_type, body = route("/montybase.js", "h:1", CONFIG, None, False)
    assert status == 200 and content_type.startswith("text/javascript") and b"/montybase/index.js" in body
    status, content_type, body = route("/montybase/index.js", "h:1", CONFIG, None, False)
    assert status == 200 and b"export" in body


@NO_SERVER
def test_the_client_config_points_at_the_address_the_browser_used():
    status, content_type, body = route("/client-config.json", "example.org:8765", CONFIG, None, True)
    assert status == 200 and content_type == "application/json"
    assert json.loads(body) == {**CONFIG, "endpoint": "wss://example.org:8765"}


@NO_SERVER
def test_the_client_config_points_at_the_public_endpoint_when_the_config_sets_one():
    proxied = {**CONFIG, "endpoint": "wss://example.org"}  # the browser reached a proxy in front of us
    status, _, body = route("/client-config.json", "127.0.0.1:8765", proxied, None, False)
    assert status == 200 and json.loads(body)["endpoint"] == "wss://example.org"


@NO_SERVER
@pytest.mark.parametrize(
    "target,status,needle",
    [("/", 200, b"home"), ("/app.js", 200, b"export"), ("/sub/page.css", 200, b"body"), ("/sub/", 404, b""),
     ("/.env", 404, b""), ("/../secret.txt", 404, b""), ("/%2e%2e/secret.txt", 404, b""), ("/link", 404, b""),
     ("/sub/%2e%2e/%2e%2e/secret.txt", 404, b""), ("/nothing", 404, b""), ("/app.js?v=2", 200, b"export"),
     ("/db.json", 404, b""), ("/db.json.lock", 404, b""), ("/db.json.3.journal", 404, b""), ("/db.json.tmp", 404, b""),
     ("/montybase.json", 404, b""), ("/montybase.json.previous", 404, b""), ("/db.json.last-backup", 404, b"")],
)
def test_the_static_folder_never_lists_or_escapes(site, target, status, needle):
    got_status, _, body = route(target, "h:1", CONFIG, site, False)
    assert got_status == status and needle in body
    assert b"outside" not in body and b"SECRET" not in body


@NO_SERVER
def test_without_a_static_folder_other_paths_are_not_found():
    assert route("/", "h:1", CONFIG, None, False)[0] == 404


def test_a_real_server_answers_plain_gets_on_its_websocket_port(loop_thread, tmp_path, site):
    served = Served(loop_thread, tmp_path / "server", static=site, client_config=CONFIG)
    try:
        http = served.url.replace("ws://", "http://")
        with OPEN(http + "/", timeout=5) as answer:
            assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")
            assert answer.headers["X-Content-Type-Options"] == "nosniff" and answer.read() == b"<h1>home</h1>"
        with OPEN(http + "/client-config.json", timeout=5) as answer:
            assert json.loads(answer.read())["endpoint"] == served.url
        with pytest.raises(urllib.error.HTTPError) as caught:
            OPEN(http + "/.env", timeout=5)
        assert caught.value.code == 404
    finally:
        served.stop()


# The admin console (/admin/)

CSP = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'"


def test_the_console_is_served_with_a_strict_content_security_policy_and_no_framing(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path / "server", client_config=CONFIG)
    try:
        http = served.url.replace("ws://", "http://")
        for target in ("/admin/", "/admin/console.js", "/admin/console.css"):
            with OPEN(http + target, timeout=5) as answer:
                assert answer.status == 200
                assert answer.headers["Content-Security-Policy"] == CSP
                assert answer.headers["X-Frame-Options"] == "DENY"
                assert answer.headers["Referrer-Policy"] == "no-referrer"
                body = answer.read()
        with OPEN(http + "/admin", timeout=5) as answer:  # redirected to /admin/, whose modules are relative
            assert answer.url.endswith("/admin/") and answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as caught:
            OPEN(http + "/admin/../montybase.json", timeout=5)
        assert caught.value.code == 404 and body
    finally:
        served.stop()


@NO_SERVER
def test_the_console_page_runs_no_inline_script_or_style():
    (status, content_type, page), headers = console("/admin/")
    html = page.decode()
    assert status == 200 and content_type.startswith("text/html") and headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in html and "<style" not in html and " style=" not in html and " onclick" not in html


def test_with_admin_off_the_console_is_not_served(loop_thread, tmp_path):
    served = Served(loop_thread, tmp_path / "server", client_config=CONFIG, console=False)
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            OPEN(served.url.replace("ws://", "http://") + "/admin/", timeout=5)
        assert caught.value.code == 404 and "Content-Security-Policy" not in caught.value.headers
    finally:
        served.stop()
