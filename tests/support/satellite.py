"""The appliance as a real subprocess (`satellite run`) on a loopback port.

    sat = SatelliteProcess(tmp_path / "sat")      # pushes allowed by default
    sat.start()       # waits until GET /v2/ is 200 (bounded), else raises with the log tail
    sat.kill9(); sat.start()    # crash and come back on the same port and data dir
    sat.stop()        # SIGTERM, bounded wait, SIGKILL

The process's stdout and stderr go to `root/satellite.log` (appended across restarts).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.support.net import (
    LOOPBACK,
    StartupError,
    free_port,
    kill_process,
    log_tail,
    stop_process,
    wait_http,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

TomlValue = str | int | bool


@dataclass(frozen=True)
class Upstream:
    """One `[[upstream]]` table of the satellite config."""

    name: str
    url: str
    default: bool = False
    extra: Mapping[str, TomlValue] | None = None


def toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def satellite_command() -> list[str]:
    """The console script next to this interpreter, else the CLI module run by it."""
    script = Path(sys.executable).parent / "satellite"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from appliance.cli import main; sys.exit(main())"]


def render_config(
    *,
    push: bool = True,
    registry: Mapping[str, TomlValue] | None = None,
    upstreams: Sequence[Upstream] = (),
    extra_config: str = "",
) -> str:
    """The config TOML: `[registry]` (push + `registry` keys), upstreams, then `extra_config`.

    `extra_config` is appended verbatim, so it must open its own tables and must not
    repeat `[registry]` (pass those keys in `registry` instead).
    """
    lines = ["[registry]", f"push = {toml_value(push)}"]
    lines += [f"{key} = {toml_value(value)}" for key, value in (registry or {}).items()]
    for upstream in upstreams:
        lines += [
            "",
            "[[upstream]]",
            f"name = {toml_value(upstream.name)}",
            f"url = {toml_value(upstream.url)}",
            f"default = {toml_value(upstream.default)}",
        ]
        lines += [f"{key} = {toml_value(value)}" for key, value in (upstream.extra or {}).items()]
    text = "\n".join(lines) + "\n"
    if extra_config:
        text += "\n" + extra_config.strip("\n") + "\n"
    return text


class SatelliteProcess:
    """`satellite run --listen 127.0.0.1:PORT --data-dir DIR --config CONFIG.toml`."""

    def __init__(
        self,
        root: Path,
        *,
        push: bool = True,
        registry: Mapping[str, TomlValue] | None = None,
        upstreams: Sequence[Upstream] = (),
        extra_config: str = "",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.root = root
        self.port = port or free_port()
        self.data_dir = root / "data"
        self.config_path = root / "satellite.toml"
        self.log_path = root / "satellite.log"
        self.config_text = render_config(
            push=push, registry=registry, upstreams=upstreams, extra_config=extra_config
        )
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        return [
            *satellite_command(),
            "run",
            "--listen",
            self.host,
            "--data-dir",
            str(self.data_dir),
            "--config",
            str(self.config_path),
            *self.extra_args,
        ]

    def _env(self) -> dict[str, str]:
        # no SATELLITE_* overrides from the outer shell leak into the test instance
        env = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITE_")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def log_tail(self, max_bytes: int = 4000) -> str:
        return log_tail(self.log_path, max_bytes)

    def start(self) -> SatelliteProcess:
        """Start on the fixed port and data dir; returns once GET /v2/ answers 200."""
        if self.running:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self.config_text)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=self._env(),
        )
        try:
            wait_http(
                f"{self.url}/v2/",
                ready=lambda r: r.status_code == 200,
                proc=self._proc,
                timeout=self.startup_timeout,
            )
        except StartupError as exc:
            self.stop()
            raise StartupError(
                f"satellite: {exc}\ncommand: {' '.join(self.command())}\n"
                f"--- {self.log_path} tail ---\n{self.log_tail()}"
            ) from None
        return self

    def _forget(self) -> None:
        self._proc = None
        log, self._log = self._log, None
        if log is not None:
            log.close()

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to `grace` s, then SIGKILL. Returns the exit code (None if idle)."""
        proc = self._proc
        code = None if proc is None else stop_process(proc, grace=grace)
        self._forget()
        return code

    def kill9(self) -> int | None:
        """SIGKILL now, as a crash would; the data dir is left as the kill found it."""
        proc = self._proc
        code = None if proc is None else kill_process(proc)
        self._forget()
        return code

    def restart(self) -> SatelliteProcess:
        """Graceful stop, then start on the same port with the same data dir."""
        self.stop()
        return self.start()

    def __enter__(self) -> SatelliteProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
