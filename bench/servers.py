"""The servers a benchmark run compares, started as child processes on 127.0.0.1.

- `NginxProcess`: nginx with a generated nginx.conf in a temp dir (`nginx -c CONF -p DIR
  -g 'daemon off;'`), one worker, sendfile on, access_log off, every path under the dir.
- `QuietRegistry`: Debian's docker-registry (tests.support.upstream.UpstreamRegistry)
  with its access log off and log level `error`, as one would run it for throughput.
- The satellite itself is tests.support.satellite.SatelliteProcess.

Also: CPU pinning of a running process (every thread), and a peak-RSS sampler.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from tests.support.net import LOOPBACK, free_port
from tests.support.process import ServerProcess
from tests.support.upstream import UpstreamRegistry, require_tool


class QuietRegistry(UpstreamRegistry):
    """docker-registry without per-request logging (the test fixture logs every request)."""

    def _config_text(self) -> str:
        text = super()._config_text()
        text = text.replace("  level: info", "  level: error")
        return text.replace("    disabled: false", "    disabled: true")


class NginxProcess(ServerProcess):
    """nginx serving `root` (static files) on a free loopback port, one worker process."""

    name = "nginx"

    def __init__(self, workdir: Path, root: Path, *, port: int | None = None) -> None:
        super().__init__(workdir / "error.log")
        self.workdir = workdir
        self.root = root
        self.port = port or free_port()
        self.conf = workdir / "nginx.conf"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _conf_text(self) -> str:
        d = self.workdir
        # workers of a root master drop to `nobody` unless told otherwise; the temp dirs
        # are 0700, so a root run keeps root (a non-root run needs no user directive)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temps = "\n".join(
            f"    {kind}_temp_path {d / 'tmp' / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""{user}worker_processes 1;
pid {d / "nginx.pid"};
error_log {self.log_path} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
{temps}
    server {{
        listen {LOOPBACK}:{self.port} backlog=4096;
        root {self.root};
        location = /empty {{ return 200; }}
        location = /status {{ stub_status; }}
    }}
}}
"""

    def start(self) -> NginxProcess:
        binary = require_tool("nginx", "nginx-light")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._conf_text())
        self._launch(
            [binary, "-c", str(self.conf), "-p", str(self.workdir), "-g", "daemon off;"],
            output=self.workdir / "stderr.log",
        )
        self._await_ready(f"{self.url}/empty", lambda r: r.status_code == 200)
        return self


# --------------------------------------------------------------------------- processes


def _children(pid: int | None) -> list[int]:
    """Direct children of `pid`, from the ppid field of /proc/*/stat."""
    if pid is None:
        return []
    out: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if fields and int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (bounded depth)."""
    pids = [pid]
    frontier = [pid]
    for _ in range(4):
        frontier = [c for p in frontier for c in _children(p)]
        if not frontier:
            break
        pids += frontier
    return pids


def pin(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of `pid` and of its children.

    Threads created later inherit the affinity of the thread that creates them.
    """
    for p in process_tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(task.name), cpus)


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM of every process in the tree (`echo 5 > /proc/PID/clear_refs`)."""
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{p}/clear_refs").write_text("5")


class RssSampler:
    """Samples the summed VmRSS of a process tree every `interval` s in a thread.

    `peak_mb` is the largest sum seen; `hwm_mb` is the sum of the kernel's VmHWM (peak
    RSS since `reset_peak_rss`) at the end, which catches spikes between samples.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.hwm_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        pids = process_tree(self.pid)
        for i in range(100_000):  # bounded: at most ~80 min at 50 ms
            if self._stop.is_set():
                break
            if i % 20 == 0:
                pids = process_tree(self.pid)
            total = sum(_status_kb(p, "VmRSS") for p in pids)
            self.peak_kb = max(self.peak_kb, total)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        reset_peak_rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.hwm_kb = sum(_status_kb(p, "VmHWM") for p in process_tree(self.pid))

    @staticmethod
    def current_mb(pid: int) -> float:
        """The summed VmRSS of the process tree now, in MB (MiB)."""
        return sum(_status_kb(p, "VmRSS") for p in process_tree(pid)) / 1024

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    @property
    def hwm_mb(self) -> float:
        return self.hwm_kb / 1024
