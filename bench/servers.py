"""The servers a benchmark run compares, started as child processes on 127.0.0.1.

- `NginxProcess`: nginx with a generated nginx.conf in a temp dir (`nginx -c CONF -p DIR
  -g 'daemon off;'`), `worker_processes auto` (its default packaging's: one worker per
  core) unless told otherwise, sendfile on, access_log off, every path under the dir.
- `QuietRegistry`: Debian's docker-registry (tests.support.upstream.UpstreamRegistry)
  with its access log off and log level `error`, as one would run it for throughput.
- The satellite itself is tests.support.satellite.SatelliteProcess.

Also: CPU pinning of a running process (every thread), a peak-RSS sampler, and
`CpuMeter`, which splits the machine's CPU use during a phase into the server under test,
the benchmark's own processes (this script and the load generators it ran) and everything
else ("foreign" use: other work on the machine, which makes a figure suspect).
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
    """nginx serving `root` (static files) on a free loopback port.

    `workers` is nginx's `worker_processes`: "auto" (one per core, as Debian's nginx.conf
    has it) by default.
    """

    name = "nginx"

    def __init__(
        self, workdir: Path, root: Path, *, port: int | None = None, workers: int | str = "auto"
    ) -> None:
        super().__init__(workdir / "error.log")
        self.workdir = workdir
        self.root = root
        self.port = port or free_port()
        self.workers = workers
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
        return f"""{user}worker_processes {self.workers};
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


def _all_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) of every process."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 12:
            yield int(stat.parent.name), fields


def _children(pid: int | None) -> list[int]:
    """Direct children of `pid`, from the ppid field of /proc/*/stat."""
    if pid is None:
        return []
    return [child for child, fields in _all_stats() if int(fields[1]) == pid]


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


# --------------------------------------------------------------------------- CPU use

_TICK = os.sysconf("SC_CLK_TCK")
KTHREADD = 2  # the parent of every kernel thread
FOREIGN_LIMIT = 0.10  # cores: a phase beside more foreign use than this is marked
STEAL_LIMIT = 0.05  # cores taken by the hypervisor


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants (with their reaped children)."""
    total = 0
    for p in process_tree(pid):
        try:
            text = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / _TICK


def kernel_threads_cpu_s() -> float:
    """CPU seconds of the kernel's threads (the children of kthreadd), one pass over /proc."""
    ticks = sum(
        int(fields[11]) + int(fields[12])
        for _, fields in _all_stats()
        if int(fields[1]) == KTHREADD
    )
    return ticks / _TICK


def own_cpu_s() -> float:
    """CPU seconds of this process and of every child it has waited for (load generators)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_cpu_s() -> tuple[float, float, float]:
    """The machine's (busy, irq + softirq, steal) CPU seconds since boot, from /proc/stat.

    Busy is user + nice + system: what processes are charged with. Interrupt time is kept
    apart (on loopback it is mostly the benchmark's own traffic), steal too (the
    hypervisor running someone else on this VM's cores).
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system) / _TICK, (irq + softirq) / _TICK, steal / _TICK


@dataclass
class CpuUse:
    """CPU seconds spent during one phase, by whom (see CpuMeter)."""

    wall_s: float = 0.0
    server_s: float = 0.0  # the server under test, all its processes
    bench_s: float = 0.0  # this script, the load generators and the idle servers
    # kernel threads (softirq work for loopback traffic, writeback of files written):
    # mostly the benchmark's own doing on a quiet machine, so not counted as foreign
    kernel_s: float = 0.0
    foreign_s: float = 0.0  # everything else on the machine
    irq_s: float = 0.0
    steal_s: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0

    @property
    def foreign_cores(self) -> float:
        return self.foreign_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def steal_cores(self) -> float:
        return self.steal_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def disturbed(self) -> bool:
        """Whether the phase ran beside foreign load (other work, or a busy hypervisor)."""
        return self.foreign_cores > FOREIGN_LIMIT or self.steal_cores > STEAL_LIMIT

    def as_json(self) -> dict[str, float | bool]:
        return {
            **{k: round(v, 3) for k, v in self.__dict__.items()},
            "foreign_cores": round(self.foreign_cores, 3),
            "steal_cores": round(self.steal_cores, 3),
            "disturbed": self.disturbed,
        }


class CpuMeter:
    """Measures one phase: `with CpuMeter(server, others) as m: ...; m.use`.

    `server` is the pid of the server under test, `others` those of the servers that sit
    idle meanwhile (counted as the benchmark's). Load generators must have been run and
    waited for inside the block (subprocess.run) for their CPU to count as the
    benchmark's; whatever else ran on the machine is the foreign use.
    """

    def __init__(self, server: int | None, others: tuple[int, ...] = ()) -> None:
        self.server = server
        self.others = others
        self.use = CpuUse()
        self._start: tuple[float, ...] = ()

    def _sample(self) -> tuple[float, ...]:
        busy, irq, steal = machine_cpu_s()
        server = tree_cpu_s(self.server) if self.server is not None else 0.0
        ours = own_cpu_s() + sum(tree_cpu_s(p) for p in self.others)
        return time.monotonic(), busy, irq, steal, server, ours, kernel_threads_cpu_s()

    def __enter__(self) -> CpuMeter:
        self.use.load_before = os.getloadavg()[0]
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, busy, irq, steal, server, ours, kernel = (
            b - a for a, b in zip(self._start, self._sample(), strict=True)
        )
        self.use = CpuUse(
            wall_s=wall,
            server_s=server,
            bench_s=ours,
            kernel_s=kernel,
            foreign_s=max(0.0, busy - server - ours - kernel),
            irq_s=irq,
            steal_s=steal,
            load_before=self.use.load_before,
            load_after=os.getloadavg()[0],
        )


def quiet_window(pids: tuple[int, ...], seconds: float = 2.0) -> CpuUse:
    """The machine's CPU use over `seconds` while the benchmark does nothing."""
    with CpuMeter(None, pids) as meter:
        time.sleep(seconds)
    return meter.use
