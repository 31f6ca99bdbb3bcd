"""The appliance as a real subprocess (`satellite run`) on a loopback port.

    sat = SatelliteProcess(tmp_path / "sat")      # pushes allowed by default
    sat.start()       # waits until GET /v2/ is 200 (bounded), else raises with the log tail
    sat.kill9(); sat.start()    # crash and come back on the same port and data dir
    sat.stop()        # SIGTERM, bounded wait, SIGKILL

The process's stdout and stderr go to `root/satellite.log` (appended across restarts).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.net import (
    LOOPBACK,
    free_port,
)
from tests.support.process import STARTUP_TIMEOUT, ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]

TomlValue = str | int | bool


@dataclass(frozen=True)
class UpstreamTable:
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
    upstreams: Sequence[UpstreamTable] = (),
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


class SatelliteProcess(ServerProcess):
    """`satellite run --listen 127.0.0.1:PORT --data-dir DIR --config CONFIG.toml`."""

    name = "satellite"

    def __init__(
        self,
        root: Path,
        *,
        push: bool = True,
        registry: Mapping[str, TomlValue] | None = None,
        upstreams: Sequence[UpstreamTable] = (),
        extra_config: str = "",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        workers: int = 1,
    ) -> None:
        super().__init__(root / "satellite.log", startup_timeout)
        self.root = root
        self.port = port or free_port()
        self.data_dir = root / "data"
        self.config_path = root / "satellite.toml"
        self.config_text = render_config(
            push=push, registry=registry, upstreams=upstreams, extra_config=extra_config
        )
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.workers = workers  # serving processes (server.workers; 0: one per core)

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` on /metrics whose labels include `labels`."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
            if match and all(f'{k}="{v}"' in (match[1] or "") for k, v in labels.items()):
                total += float(match[2])
        return total

    def counter_by_pid(self, name: str) -> dict[int, float]:
        """With several workers: each worker's own count of the counter `name` (all its
        labels summed), from the multiprocess metrics files in the runtime directory."""
        from prometheus_client.mmap_dict import MmapedDict

        counts: dict[int, float] = {}
        for path in (self.data_dir / "run" / "metrics").glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
                if json.loads(key)[0] == name:
                    counts[pid] = counts.get(pid, 0.0) + value
        return counts

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
        env["SATELLITE_SERVER_WORKERS"] = str(self.workers)
        env.update(self.extra_env)
        return env

    def start(self) -> SatelliteProcess:
        """Start on the fixed port and data dir; returns once GET /v2/ answers 200 and,
        with several serving processes, once the supervisor logged that all of them
        serve (the first one answering says nothing of the others, which may still be
        starting: a benchmark would measure their start beside its first requests)."""
        if self.running:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self.config_text)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._launch(self.command(), env=self._env(), cwd=self.root)
        self._await_ready(
            f"{self.url}/v2/",
            lambda r: r.status_code == 200,
            detail=f"command: {' '.join(self.command())}\n",
        )
        count = self.workers or len(os.sched_getaffinity(0))
        if count > 1:
            self._await_log(f"all {count} worker processes serve", offset)
        return self

    def restart(self) -> SatelliteProcess:
        """Graceful stop, then start on the same port with the same data dir."""
        self.stop()
        return self.start()

    def __enter__(self) -> SatelliteProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
