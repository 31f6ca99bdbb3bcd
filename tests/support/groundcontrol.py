"""`groundcontrol serve` as a real process on a loopback port (tests and benchmarks).

server = GroundControlProcess(workdir, "--data-dir", str(data), "--database", url)
server.launch()   # returns at once: several servers can start side by side
server.wait()     # GET /healthz answers 200 (bounded), else StartupError with the log
server.stop()     # SIGTERM, bounded wait, SIGKILL; returns the exit code
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.support.net import LOOPBACK, free_port
from tests.support.process import STARTUP_TIMEOUT, ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]


def groundcontrol_env() -> dict[str, str]:
    """This environment without GROUNDCONTROL_* overrides, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDCONTROL_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


class GroundControlProcess(ServerProcess):
    name = "groundcontrol"

    def __init__(self, workdir: Path, *args: str, startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self.port = free_port()
        super().__init__(workdir / f"gc-{self.port}.log", startup_timeout)
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.args = args

    def launch(self) -> GroundControlProcess:
        argv = [sys.executable, "-m", "groundcontrol", "serve", "--listen"]
        self._launch([*argv, f"{LOOPBACK}:{self.port}", *self.args], env=groundcontrol_env())
        return self

    def wait(self) -> None:
        self._await_ready(f"{self.url}/healthz", lambda r: r.status_code == 200)
