"""A fleet on loopback for tests: `groundcontrol serve` and `satellite` as real processes.

    fleet = Fleet(tmp_path).start()                 # Ground Control, an operator token
    token = fleet.create_satellite("shop-1", config={"checkin_interval": "1s"})
    sat = fleet.satellite("shop-1")                 # a SatelliteProcess, not started
    fleet.register(sat, token)                      # `satellite register` (the real CLI)
    sat.start()
    wait_until(lambda: fleet.status(sat)["state"]["version"] == 2)

Ground Control's state signing keys are on disk under its data dir; ``state_keys()``
loads them so that a test can forge documents signed by the real keys (an expired or
another satellite's state) to prove the satellite refuses them for the right reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from groundcontrol.contract import private_key_from_pem
from tests.support.groundcontrol import GroundControlProcess, groundcontrol_env
from tests.support.satellite import SatelliteProcess, satellite_command
from tests.support.terminal import run_with_terminal_stderr

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (httpx.HTTPError, OSError, KeyError, TypeError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}: {last!r}")


def run_satellite_cli(
    *args: str, check: bool = True, terminal: bool = False
) -> subprocess.CompletedProcess[str]:
    """``satellite ARGS``; with ``terminal``, its stderr is a terminal (progress drawn)."""
    cmd = [*satellite_command(), *args]
    env = {**groundcontrol_env(), "NO_PROXY": "127.0.0.1,localhost,::1"}
    if terminal:
        done = run_with_terminal_stderr(cmd, cwd=ROOT, env=env, timeout=120)
    else:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


class Fleet:
    def __init__(self, root: Path, *gc_args: str, config: str = "") -> None:
        self.root = root
        self.data = root / "gc-data"
        root.mkdir(parents=True, exist_ok=True)
        args = ["--data-dir", str(self.data), *gc_args]
        if config:
            path = root / "gc.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        self.gc = GroundControlProcess(root, *args)
        self.token = ""

    @property
    def url(self) -> str:
        return self.gc.url

    def start(self) -> Fleet:
        self.gc.launch()
        self.gc.wait()
        if not self.token:
            self.token = self.cli("admin", "token", "create", "ops", "--data-dir", str(self.data))
        return self

    def stop(self) -> None:
        self.gc.stop()

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "groundcontrol", *args],
            cwd=ROOT,
            env=groundcontrol_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def api(self, method: str, path: str, body: object = None) -> Any:
        response = httpx.request(
            method,
            f"{self.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def create_group(self, name: str, images: Sequence[dict[str, Any]] = ()) -> None:
        self.api("POST", "/api/v1/groups", {"name": name, "images": list(images)})

    def create_satellite(
        self, name: str, group: str | None = None, config: Mapping[str, Any] | None = None
    ) -> str:
        body: dict[str, Any] = {"name": name, "groups": [group] if group else []}
        if config:
            body["config"] = dict(config)
        answer = self.api("POST", "/api/v1/satellites", body)
        token = answer["join_token"]["token"]
        assert isinstance(token, str)
        return token

    def join_token(self, name: str) -> str:
        token = self.api("POST", f"/api/v1/satellites/{name}/join-tokens")["token"]
        assert isinstance(token, str)
        return token

    def satellite(self, name: str, **kwargs: Any) -> SatelliteProcess:
        return SatelliteProcess(self.root / name, **kwargs)

    def register(self, sat: SatelliteProcess, token: str, *extra: str) -> str:
        done = run_satellite_cli(
            "register",
            "--ground-control",
            self.url,
            "--token",
            token,
            "--data-dir",
            str(sat.data_dir),
            *extra,
        )
        return done.stdout

    def checkins(self, name: str, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self.api("GET", f"/api/v1/satellites/{name}/checkins?limit={limit}")["checkins"]
        assert isinstance(rows, list)
        return rows

    def seqs(self, name: str) -> list[int]:
        return sorted(row["seq"] for row in self.checkins(name))

    def state_keys(self) -> list[Any]:
        return [
            private_key_from_pem(path.read_bytes())
            for path in sorted((self.data / "keys").glob("state-*.pem"))
        ]


def status(sat: SatelliteProcess) -> dict[str, Any]:
    done = run_satellite_cli("status", "--json", "--data-dir", str(sat.data_dir))
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data


def state_version(sat: SatelliteProcess) -> int:
    state = status(sat).get("state")
    return int(state["version"]) if state else 0
