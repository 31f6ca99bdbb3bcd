"""Debian's `docker-registry` (distribution 2.8) as a real upstream registry on loopback.

    reg = UpstreamRegistry(tmp_path / "upstream", auth=("user", "pass"))
    reg.start()          # writes CONFIG.yml, serves on 127.0.0.1:<free port>
    reg.stop(); reg.start()   # the same port and storage: "upstream down, then back"

It lacks the referrers API and sha512 (see TESTBED.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx

from tests.support.images import sha256_bytes
from tests.support.net import LOOPBACK, free_port
from tests.support.process import STARTUP_TIMEOUT, ServerProcess

BINARY = "docker-registry"


class ToolMissing(RuntimeError):
    """A Debian package the tests drive is not installed (scripts/bootstrap.sh installs it)."""


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(
            f"`{name}` not found on PATH: install the Debian package `{package}` "
            "(scripts/bootstrap.sh does)"
        )
    return path


def _yaml_str(value: str) -> str:
    # a JSON string is a valid YAML scalar, quoted as needed
    return json.dumps(value)


# an access log line (combined format): "GET /v2/<repo>/blobs/<digest> HTTP/1.1" 200 <bytes>
_BLOB_GET = re.compile(r'"GET /v2/\S+/blobs/\S+ HTTP/[\d.]+" 20[06] (\d+) ')


class UpstreamRegistry(ServerProcess):
    """One docker-registry process with filesystem storage under `root` (stop keeps it)."""

    name = "docker-registry"

    def __init__(
        self,
        root: Path,
        *,
        auth: tuple[str, str] | None = None,
        proxy_remote: str | None = None,
        proxy_auth: tuple[str, str] | None = None,
        port: int | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        address: str = LOOPBACK,
        netns: str | None = None,
    ) -> None:
        """`address` and `netns`: listen there, inside that network namespace (benchmarks
        put the upstream behind a shaped link; the caller creates the namespace)."""
        super().__init__(root / "registry.log", startup_timeout)
        self.root = root
        self.address = address
        self.netns = netns
        self.auth = auth
        self.proxy_remote = proxy_remote
        self.proxy_auth = proxy_auth
        self.port = port or free_port()
        self.storage = root / "storage"
        self.config_path = root / "config.yml"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _config_text(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {_yaml_str(str(self.storage))}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {_yaml_str(self.host)}",
            "  headers:",
            "    X-Content-Type-Options: [nosniff]",
            "health:",
            "  storagedriver:",
            "    enabled: false",
        ]
        if self.auth is not None:
            htpasswd = self.root / "htpasswd"
            user, password = self.auth
            tool = require_tool("htpasswd", "apache2-utils")
            out = subprocess.run(
                [tool, "-Bbn", user, password],
                check=True,
                capture_output=True,
                timeout=30,
            ).stdout
            htpasswd.write_bytes(out.strip() + b"\n")
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: satellite-test",
                f"    path: {_yaml_str(str(htpasswd))}",
            ]
        if self.proxy_remote is not None:
            lines += ["proxy:", f"  remoteurl: {_yaml_str(self.proxy_remote)}"]
            if self.proxy_auth is not None:
                lines += [
                    f"  username: {_yaml_str(self.proxy_auth[0])}",
                    f"  password: {_yaml_str(self.proxy_auth[1])}",
                ]
        return "\n".join(lines) + "\n"

    def start(self) -> UpstreamRegistry:
        """Start (or restart) on the same port and storage; returns once /v2/ answers."""
        if self.running:
            return self
        binary = require_tool(BINARY, "docker-registry")
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        self.config_path.write_text(self._config_text())
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self._launch(
            [*prefix, binary, "serve", str(self.config_path)],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root)},
        )
        # 401 is an answer too (htpasswd mode)
        self._await_ready(f"{self.url}/v2/", lambda r: r.status_code in (200, 401))
        return self

    def blobs_served(self) -> tuple[int, int]:
        """(bytes, requests) of the blob GETs answered so far (200 and 206), from the
        access log: what a proxy in front of this registry fetched, counted without a relay."""
        total = requests = 0
        if self.log_path.exists():
            for match in _BLOB_GET.finditer(self.log_path.read_text(errors="replace")):
                total += int(match.group(1))
                requests += 1
        return total, requests

    def __enter__(self) -> UpstreamRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    """Pushes ``data`` as a blob of ``repo`` (one POST, one PUT); returns its digest."""
    digest = sha256_bytes(data)
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    sep = "&" if "?" in location else "?"
    r = client.put(f"{location}{sep}digest={digest}", content=data)
    assert r.status_code == 201, r.text
    return digest
