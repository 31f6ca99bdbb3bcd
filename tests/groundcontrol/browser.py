"""Debian's headless chromium driven through chromedriver's W3C WebDriver HTTP API.

    with Browser(tmp_path) as browser:
        browser.get(url); browser.type("input[name=token]", token); browser.click("button")
        browser.source(); browser.url(); browser.wait_title("done")
        browser.screenshot(path)                      # the whole page, as PNG

One browser profile per `Browser`, so cookies persist across page loads as in a real
operator's browser. Every wait is bounded.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.net import LOOPBACK, free_port
from tests.support.process import STARTUP_TIMEOUT, ServerProcess

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


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"`{tool}` not found: install the Debian package `{package}`", pytrace=False)
    return path


class ChromeDriver(ServerProcess):
    name = "chromedriver"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        super().__init__(workdir / f"chromedriver-{self.port}.log", startup_timeout=STARTUP_TIMEOUT)
        self.url = f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ChromeDriver:
        driver = _need("chromedriver", "chromium-driver")
        self._launch([driver, f"--port={self.port}", "--allowed-ips=127.0.0.1"])
        self._await_ready(f"{self.url}/status", lambda r: r.status_code == 200)
        return self


class Browser:
    def __init__(self, workdir: Path) -> None:
        self.driver = ChromeDriver(workdir)
        self.profile = tempfile.mkdtemp(prefix="gc-chromium-", dir=workdir)
        self.http = httpx.Client(timeout=90, trust_env=False)
        self.session = ""

    def __enter__(self) -> Browser:
        chromium = _need("chromium", "chromium")
        self.driver.start()
        options = {"binary": chromium, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"]}
        caps = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        try:
            value = self._call("POST", "/session", {"capabilities": caps}, session=False)
        except BaseException:
            self.driver.stop()
            raise
        self.session = value["sessionId"]
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.session:
                self._call("DELETE", "", None)
        finally:
            self.http.close()
            self.driver.stop()

    def _call(self, method: str, path: str, body: Any, session: bool = True) -> Any:
        prefix = f"/session/{self.session}" if session else ""
        r = self.http.request(method, f"{self.driver.url}{prefix}{path}", json=body)
        data = r.json()
        assert r.status_code == 200, (method, path, data, self.driver.log_tail())
        return data["value"]

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def url(self) -> str:
        return str(self._call("GET", "/url", None))

    def source(self) -> str:
        return str(self._call("GET", "/source", None))

    def title(self) -> str:
        return str(self._call("GET", "/title", None))

    def _element(self, css: str) -> str:
        found = self._call("POST", "/element", {"using": "css selector", "value": css})
        return str(next(iter(found.values())))

    def type(self, css: str, text: str) -> None:
        self._call("POST", f"/element/{self._element(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self._call("POST", f"/element/{self._element(css)}/click", {})

    def _wait(self, probe: Any, want: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.1) + 1):
            if probe() == want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert probe() == want, self.source()[-2000:]

    def screenshot(self, path: Path, width: int = 1280) -> Path:
        """The page as PNG, the window grown to the page's height first (chromium
        captures the viewport only)."""
        self._call("POST", "/window/rect", {"width": width, "height": 600})
        height = self._call(
            "POST",
            "/execute/sync",
            {"script": "return document.documentElement.scrollHeight", "args": []},
        )
        self._call("POST", "/window/rect", {"width": width, "height": min(int(height) + 140, 6000)})
        png = base64.b64decode(self._call("GET", "/screenshot", None))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return path

    def wait_title(self, title: str, timeout: float = 60) -> None:
        self._wait(self.title, title, timeout)

    def wait_url(self, url: str, timeout: float = 30) -> None:
        """A click that submits a form may return before the next page is there."""
        self._wait(self.url, url, timeout)


ARTIFACTS_ENV = "SATELLITE_TEST_ARTIFACTS"


def artifacts_dir(default: Path) -> Path:
    """Where tests keep what a person looks at afterwards (screenshots):
    ``$SATELLITE_TEST_ARTIFACTS``, else ``test-artifacts/`` in the checkout."""
    return Path(os.environ.get(ARTIFACTS_ENV) or default)
