"""The fleet dashboard rendered by Debian's headless chromium against a real server."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from groundcontrol.contract import ImageStatus
from tests.groundcontrol.fleet import SimSatellite
from tests.groundcontrol.test_serve import gc
from tests.support.groundcontrol import GroundControlProcess

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def dump_dom(url: str) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("`chromium` not found: install the Debian package `chromium`", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="gc-chromium-") as profile:
        done = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            timeout=90,
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


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


async def test_dashboard_shows_fleet_and_satellite(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = GroundControlProcess(tmp_path, "--data-dir", str(data)).launch()
    try:
        server.wait()
        token = gc("admin", "token", "create", "ops", "--data-dir", str(data)).strip()
        remote = ["--url", server.url, "--token", token]
        gc("group", "create", "shops", *remote)
        join = gc("satellite", "create", "shop-1", "--group", "shops", *remote).strip()
        gc("satellite", "create", "train-7", *remote)
        async with httpx.AsyncClient(base_url=server.url) as client:
            sat = SimSatellite(client, "shop-1")
            await sat.register(join, time.time())
            bad = ImageStatus("library/app", "sha256:" + "c" * 64, "failed", "<disk full>")
            r = await sat.post([sat.checkin(time.time(), 1, (bad,))])
            assert r.json()["accepted"] == [1]

        base = server.url.replace("http://", f"http://op:{token}@")
        fleet = parse(dump_dom(f"{base}/dashboard"))
        assert set(fleet.rows) == {"shop-1", "train-7"}
        assert fleet.rows["shop-1"]["data-status"] == "failing"
        assert fleet.rows["shop-1"]["status"] == "failing"
        assert fleet.rows["train-7"]["status"] == "pending"
        assert fleet.rows["shop-1"]["applied"] == "1"
        assert fleet.rows["shop-1"]["published"] == "1"
        assert "<disk full>" in fleet.rows["shop-1"]["failing"]  # escaped, shown as text
        assert fleet.rows["train-7"]["last-seen"] == "—"
        assert fleet.text["total"] == "2 satellite(s)"

        detail = parse(dump_dom(f"{base}/dashboard/satellites/shop-1"))
        assert detail.text["satellite"] == "shop-1"
        assert detail.text["status"] == "failing"
        assert detail.text["groups"] == "shops"
        assert "library/app@sha256:" in detail.text["failing"]
        assert "1" in detail.text["checkins"]

        # without the token the browser gets no page
        denied = dump_dom(f"{server.url}/dashboard")
        assert "shop-1" not in denied
    finally:
        assert server.stop() == 0
