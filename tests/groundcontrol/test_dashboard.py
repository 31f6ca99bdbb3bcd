"""The fleet dashboard in Debian's headless chromium (driven by chromedriver) against a
real server: signing in, the pages, signing out, and a page on another origin that tries
every state-changing request while the browser holds a signed-in session."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html import escape
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from groundcontrol import dashboard
from groundcontrol.contract import ImageStatus
from tests.groundcontrol.browser import Browser
from tests.groundcontrol.fleet import SimSatellite
from tests.groundcontrol.test_serve import gc
from tests.support.groundcontrol import GroundControlProcess
from tests.support.net import LOOPBACK


class Dom(HTMLParser):
    """Collects text per element carrying an id, a data-satellite or a data-field."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: dict[str, str] = {}
        self.rows: dict[str, dict[str, str]] = {}
        self._row: str | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-satellite"):
            self._row = a["data-satellite"]
            self.rows[self._row] = {"data-status": a.get("data-status") or ""}
        if tag == "td" and self._row is not None:
            self._cell = a.get("class")
            if self._cell:
                self.rows[self._row].setdefault(self._cell, "")
        key = a.get("data-field") or a.get("id")
        self.stack.append(key or "")
        if key:
            self.text.setdefault(key, "")

    def handle_endtag(self, tag: str) -> None:
        if self.stack:
            self.stack.pop()
        if tag == "tr":
            self._row = None
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        for key in self.stack:
            if key:
                self.text[key] += data
        if self._row is not None and self._cell:
            self.rows[self._row][self._cell] += data


def parse(html: str) -> Dom:
    dom = Dom()
    dom.feed(html)
    return dom


def snapshot(db: Path) -> dict[str, list[Any]]:
    """Every row of every table, except when a token was last used."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out: dict[str, list[Any]] = {}
        for table in sorted(tables):
            rows = [
                {k: r[k] for k in r.keys() if k != "last_used_at"}  # noqa: SIM118
                for r in conn.execute(f"SELECT * FROM {table}")
            ]
            out[table] = sorted(rows, key=lambda row: json.dumps(row, sort_keys=True))
        return out
    finally:
        conn.close()


def forged_page(gc_url: str, attacker_token: str) -> str:
    """Auto-submitting forms (text/plain crafted as JSON, urlencoded, multipart) and
    no-cors fetches, each at one state-changing route of Ground Control."""
    json_bodies = {
        "/api/v1/tokens": '{"name": "evil", "pad": "',
        "/api/v1/groups": '{"name": "evil", "pad": "',
        "/api/v1/satellites": '{"name": "evil", "pad": "',
        "/api/v1/satellites/victim/revoke": '{"pad": "',
        "/api/v1/satellites/victim/join-tokens": '{"ttl": 600, "pad": "',
        "/api/v1/satellites/victim/publish": '{"pad": "',
        "/api/v1/register": '{"token": "gcj_0000000000000000.x", "pad": "',
    }
    forms: list[tuple[str, str, dict[str, str]]] = []
    for path, head in json_bodies.items():
        forms.append((path, "text/plain", {head: '"}'}))
        forms.append((path, "application/x-www-form-urlencoded", {"name": "evil"}))
        forms.append((path, "multipart/form-data", {"name": "evil"}))
    dashboard_forms = [
        ep.path.replace("{name}", "shops" if "/groups/" in ep.path else "victim")
        for ep in dashboard.ENDPOINTS
        if ep.method == "POST" and ep.access == "dashboard" and ep.path != "/dashboard/logout"
    ]
    assert len(dashboard_forms) == 5  # publish (group, satellite), join token, rotate, revoke
    for enctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data"):
        for path in dashboard_forms:
            fields = {"csrf": "guess", "confirm": "victim", "images": "library/evil:1"}
            forms.append((path, enctype, fields))
        forms.append(("/dashboard/logout", enctype, {"csrf": "guess"}))
        forms.append(("/dashboard/logout", enctype, {}))
        forms.append(("/dashboard/login", enctype, {"token": attacker_token}))
    html = []
    for i, (path, enctype, fields) in enumerate(forms):
        inputs = "".join(
            f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
            for k, v in fields.items()
        )
        html.append(
            f'<iframe name="f{i}"></iframe><form target="f{i}" method="post" '
            f'action="{gc_url}{path}" enctype="{enctype}">{inputs}</form>'
        )
    # simple requests (no preflight) with the browser's cookies ...
    fetches = [
        [f"{gc_url}{path}", "POST", "no-cors", kind, body]
        for path, body in (
            ("/api/v1/tokens", '{"name": "evil"}'),
            ("/api/v1/satellites/victim/revoke", "{}"),
            ("/dashboard/logout", "csrf=guess"),
            ("/dashboard/satellites/victim/revoke", "csrf=guess&confirm=victim"),
            ("/dashboard/satellites/victim/join-token", "csrf=guess"),
            ("/dashboard/login", f"token={attacker_token}"),
        )
        for kind in ("text/plain", "application/x-www-form-urlencoded")
    ]
    # ... and requests that need a CORS preflight, which Ground Control never grants
    fetches += [
        [f"{gc_url}{path}", method, "cors", "application/json", body]
        for method, path, body in (
            ("POST", "/api/v1/tokens", '{"name": "evil"}'),
            ("DELETE", "/api/v1/satellites/victim", ""),
            ("PATCH", "/api/v1/satellites/victim", '{"labels": {"evil": "1"}}'),
            ("PUT", "/api/v1/upstream-credentials/evil.example", '{"username": "u"}'),
        )
    ]
    script = f"""
const forms = document.querySelectorAll("form");
const fetches = {json.dumps(fetches)};
let pending = forms.length + fetches.length;
const one = () => {{ pending -= 1; if (pending === 0) document.title = "done"; }};
for (const form of forms) {{
  document.getElementsByName(form.target)[0].addEventListener("load", one, {{once: true}});
  form.submit();
}}
for (const [url, method, mode, type, body] of fetches) {{
  fetch(url, {{method, mode, credentials: "include", headers: {{"Content-Type": type}},
               body: body || undefined}}).then(one, one);
}}
"""
    return (
        "<!doctype html><html><head><title>loading</title></head><body>"
        + "".join(html)
        + f"<script>{script}</script></body></html>"
    )


@contextmanager
def serve_page(html: str) -> Iterator[str]:
    """`html` at / on another loopback port (another origin than Ground Control)."""
    body = html.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_dashboard_in_the_browser_and_forged_requests(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = GroundControlProcess(tmp_path, "--data-dir", str(data)).launch()
    try:
        server.wait()
        token = gc("admin", "token", "create", "ops", "--data-dir", str(data)).strip()
        attacker = gc("admin", "token", "create", "attacker", "--data-dir", str(data)).strip()
        remote = ["--url", server.url, "--token", token]
        gc("group", "create", "shops", *remote)
        join = gc("satellite", "create", "shop-1", "--group", "shops", *remote).strip()
        gc("satellite", "create", "train-7", *remote)
        gc("satellite", "create", "victim", *remote)
        async with httpx.AsyncClient(base_url=server.url) as client:
            sat = SimSatellite(client, "shop-1")
            await sat.register(join, time.time())
            bad = ImageStatus("library/app", "sha256:" + "c" * 64, "failed", "<disk full>")
            r = await sat.post([sat.checkin(time.time(), 1, (bad,))])
            assert r.json()["accepted"] == [1]

        with Browser(tmp_path) as browser:
            # without a session the browser gets the login form, no data
            browser.get(f"{server.url}/dashboard")
            assert browser.url() == f"{server.url}/dashboard/login"
            assert "shop-1" not in browser.source()
            browser.type("input[name=token]", token)
            browser.click("#login button")
            browser.wait_url(f"{server.url}/dashboard")

            fleet = parse(browser.source())
            assert set(fleet.rows) == {"shop-1", "train-7", "victim"}
            assert fleet.rows["shop-1"]["data-status"] == "failing"
            assert fleet.rows["shop-1"]["status"] == "failing"
            assert fleet.rows["train-7"]["status"] == "pending"
            assert fleet.rows["shop-1"]["applied"] == "1"
            assert fleet.rows["shop-1"]["published"] == "1"
            assert fleet.rows["shop-1"]["failing"] == "1"
            assert fleet.rows["train-7"]["last-seen"] == "—"
            assert fleet.text["total"] == "3 satellite(s)"
            assert "ops" in fleet.text["logout"]

            browser.get(f"{server.url}/dashboard/satellites/shop-1")
            detail = parse(browser.source())
            assert detail.text["satellite"] == "shop-1"
            assert detail.text["status"] == "failing"
            assert detail.text["groups"] == "shops"
            assert "library/app@sha256:" in detail.text["failing"]
            assert "<disk full>" in detail.text["failing"]  # escaped, shown as text
            assert "1" in detail.text["checkins"]

            # a page on another origin tries every state-changing request
            before = snapshot(data / "gc.db")
            with serve_page(forged_page(server.url, attacker)) as page:
                browser.get(page)
                browser.wait_title("done")
            assert snapshot(data / "gc.db") == before
            # they did reach the server (the access log line follows the response)
            for line in (
                " POST /api/v1/tokens 415 ",
                " POST /dashboard/logout 403 ",
                " POST /dashboard/login 403 ",
                " POST /dashboard/satellites/victim/revoke 403 ",
                " POST /dashboard/groups/shops/publish 403 ",
            ):
                for _ in range(100):
                    if line in server.log_tail(200_000):
                        break
                    await asyncio.sleep(0.1)
                assert line in server.log_tail(200_000), server.log_tail()

            # still signed in, as the operator (not as the attacker's token)
            browser.get(f"{server.url}/dashboard")
            fleet = parse(browser.source())
            assert "ops" in fleet.text["logout"] and "attacker" not in fleet.text["logout"]
            assert fleet.rows["victim"]["status"] == "pending"

            # the real sign-out button works under the page's CSP
            browser.click("#logout button")
            browser.wait_url(f"{server.url}/dashboard/login")
            browser.get(f"{server.url}/dashboard")
            assert browser.url() == f"{server.url}/dashboard/login"
        assert snapshot(data / "gc.db")["dashboard_sessions"] == []
    finally:
        assert server.stop() == 0
