"""`satellite run` with several serving processes: one supervisor, N workers.

The supervisor sweeps the store once (what a crash left behind), holds the port, starts
the workers with ``fork`` and speaks to systemd for them: READY=1 once every worker has
opened the store and listens, WATCHDOG=1 from its own loop, STOPPING=1 on SIGTERM, which
it passes on to every worker (each drains its requests) before it exits. A worker that
dies, or whose event loop shows no sign of life for the watchdog's time (30 s without
systemd's; 10 s at least), is logged and started again (killed first); more than
``MAX_RESTARTS`` deaths within ``RESTART_WINDOW`` seconds stop the service (systemd's
restart policy takes over).

Each worker binds its own socket on the port with ``SO_REUSEPORT`` (the kernel spreads
the connections over them) and serves the registry app on its own event loop. They share
the data dir: SQLite in WAL mode, immutable blob files, advisory locks for what must
happen once (a blob's upstream fetch: registry_proxy/fill.py; a cache-budget pass:
registry_proxy/store.py). Worker 0 is the primary: the fleet agent, replication and the
admin socket run there only; the others follow the applied signed state from the fleet
database. Metrics are prometheus-client's multiprocess files in the runtime directory,
summed on every worker's /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import time
from collections import deque
from pathlib import Path
from typing import NoReturn

from appliance import notify
from appliance.config import Config

log = logging.getLogger("satellite")

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
STOP_TIMEOUT = 20.0  # hypercorn's graceful_timeout (10 s) and the lifespan's shutdown
HEARTBEAT = 2.0  # seconds between a worker's signs of life
WEDGED = 30.0  # seconds without one (systemd's WatchdogSec when it sets one)
WEDGED_FLOOR = 10.0  # but never less: a loop busy for a moment is not wedged
STARTUP_GRACE = 30.0  # more for a worker's first sign of life
PR_SET_PDEATHSIG = 1


def runtime_dir(config: Config) -> Path:
    """Where the processes keep their shared runtime files: systemd's
    ``RuntimeDirectory=`` when it set one, else ``run/`` in the data dir."""
    given = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(given) if given else config.data_dir / "run"


def metrics_dir(config: Config) -> Path:
    return runtime_dir(config) / "metrics"


class _WorkerNotifier(notify.Notifier):
    """A worker tells the supervisor, not systemd, that it is ready (``R<index>``),
    from its event loop that the loop still turns (``W<index>``, every ``heartbeat``
    seconds; a worker whose loop is wedged is killed and started again), and what its
    status fields are (``S<index> key=value ...``, which the supervisor shows on its own
    STATUS= line). One message a line."""

    def __init__(self, ready_fd: int, index: int, heartbeat: float) -> None:
        super().__init__(None, int(heartbeat * 2_000_000))
        self._ready_fd = ready_fd
        self._index = index

    @property
    def enabled(self) -> bool:
        return True

    def ready(self, phase: str) -> None:
        self._phase = phase
        self._tell("R")

    def send(self, *assignments: str) -> bool:
        for assignment in assignments:
            if assignment == "WATCHDOG=1":
                self._tell("W")
            elif assignment.startswith("STATUS="):
                fields = " ".join(f"{k}={v}" for k, v in self._fields.items())
                self._tell("S", " " + fields.replace("\n", " "))
        return True

    def _tell(self, what: str, text: str = "") -> None:
        with contextlib.suppress(OSError):
            os.write(self._ready_fd, f"{what}{self._index}{text}\n".encode())


class Supervisor:
    def __init__(self, config: Config, count: int) -> None:
        self.config = config
        self.count = count
        self.notifier = notify.current()
        self.children: dict[int, int] = {}  # pid -> worker index
        self.seen: dict[int, float] = {}  # pid of a worker -> its last sign of life
        usec = self.notifier.watchdog_usec
        self.wedged_after = max(usec / 1_000_000 if usec else WEDGED, WEDGED_FLOOR)
        self.deaths: deque[float] = deque()
        self.ready: set[int] = set()  # indexes of the workers that said they serve
        self.stopping = False
        self._ready_r, self._ready_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._ready_r, self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    def run(self) -> int:
        host, port = self.config.host_port
        # holds the port from here on (a socket that does not listen gets no connections)
        hold = notify.listening_socket(host, port, reuse_port=True, listen=False)
        _prepare_metrics_dir(self.config)
        asyncio.run(_sweep(self.config))
        previous = {
            sig: signal.signal(sig, self._on_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below
        signal.set_wakeup_fd(self._wake_w)
        announced = False
        failed = False
        try:
            for index in range(self.count):
                self._spawn(index, hold)
            log.info("serving on %s:%d with %d worker processes", host, port, self.count)
            interval = self.notifier.watchdog_interval
            next_ping = time.monotonic()
            while not self.stopping and not failed:
                timeout = 1.0 if interval is None else max(0.0, next_ping - time.monotonic())
                select.select([self._ready_r, self._wake_r], [], [], min(timeout, 1.0))
                _drain(self._wake_r)
                for message in _drain(self._ready_r).decode().splitlines():
                    self.handle(message)
                self._kill_wedged()
                if not announced and len(self.ready) >= self.count:
                    announced = True
                    log.info("all %d worker processes serve", self.count)
                    self.notifier.ready(f"serving on {host}:{port} with {self.count} workers")
                failed = self._reap(hold)
                if interval is not None and time.monotonic() >= next_ping:
                    self.notifier.send("WATCHDOG=1")
                    next_ping = time.monotonic() + interval
        finally:
            self.notifier.stopping()
            self._stop_all()
            signal.set_wakeup_fd(-1)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(hold)
            self.notifier.close()
        log.info("stopped")
        return 1 if failed else 0

    def handle(self, message: str) -> None:
        """One line from a worker (see ``_WorkerNotifier``)."""
        what, _, text = message.partition(" ")
        index = int(what[1:])
        if what[0] == "R":  # a heartbeat may come before: not ready yet
            self.ready.add(index)
        elif what[0] == "S":
            pairs = (field.partition("=") for field in text.split())
            self.notifier.replace_fields({k: v for k, _, v in pairs})
        pids = [pid for pid, i in self.children.items() if i == index]
        self.seen.update((pid, time.monotonic()) for pid in pids)

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _spawn(self, index: int, hold: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            for fd in (self._ready_r, self._wake_r, self._wake_w, hold):
                os.close(fd)
            heartbeat = min(HEARTBEAT, self.wedged_after / 4)
            _worker(self.config, index, self._ready_w, parent, heartbeat)
        self.children[pid] = index
        # its first sign of life may take its imports and the store's opening longer
        self.seen[pid] = time.monotonic() + STARTUP_GRACE

    def _kill_wedged(self) -> None:
        now = time.monotonic()
        for pid, seen in list(self.seen.items()):
            if now - seen > self.wedged_after:
                log.error(
                    "worker %d (pid %d): no sign of life for %.0f s, killing it",
                    self.children.get(pid, -1),
                    pid,
                    now - seen,
                )
                del self.seen[pid]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # reaped and started again below

    def _reap(self, hold: int) -> bool:
        """Starts workers again in place of those that died; True when they die too
        often to go on."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return False
            index = self.children.pop(pid)
            self.seen.pop(pid, None)
            _mark_dead(pid)
            if self.stopping:
                continue
            now = time.monotonic()
            self.deaths.append(now)
            while self.deaths and self.deaths[0] < now - RESTART_WINDOW:
                self.deaths.popleft()
            log.error("worker %d (pid %d) %s", index, pid, _describe(status))
            if len(self.deaths) > MAX_RESTARTS:
                log.error(
                    "%d worker deaths within %.0f s: stopping", len(self.deaths), RESTART_WINDOW
                )
                return True
            log.info("starting worker %d again", index)
            self._spawn(index, hold)
        return False

    def _stop_all(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.children and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.05)
            else:
                self.children.pop(pid, None)
                _mark_dead(pid)
        for pid in self.children:
            log.error("worker pid %d did not stop within %.0f s: killing it", pid, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()


def _drain(fd: int) -> bytes:
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            data += chunk
    return data


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _prepare_metrics_dir(config: Config) -> None:
    """An empty multiprocess metrics directory (the last run's counts are not this one's),
    named to every process by PROMETHEUS_MULTIPROC_DIR."""
    path = metrics_dir(config)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


async def _sweep(config: Config) -> None:
    from registry_proxy.store import ContentStore

    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = ContentStore(config.data_dir)
    await store.open()
    try:
        await store.sweep()
    finally:
        await store.close()


def _worker(config: Config, index: int, ready_fd: int, parent: int, heartbeat: float) -> NoReturn:
    code = 1
    try:
        # a worker goes with its supervisor, whatever ends it (as systemd ends the unit)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(key, None)
        notifier = _WorkerNotifier(ready_fd, index, heartbeat)
        notify.use(notifier)  # what the daemon reports goes through the supervisor
        from prometheus_client import values

        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        code = asyncio.run(serve(config, index, notifier))
    except BaseException:
        log.exception("worker %d failed", index)
    finally:
        logging.shutdown()
        os._exit(code)


async def serve(
    config: Config, index: int | None = None, notifier: notify.Notifier | None = None
) -> int:
    """One serving process until SIGTERM or SIGINT: the only one (``index`` None), or
    worker ``index`` of several, which tells its supervisor through ``notifier``."""
    from appliance.daemon import build
    from appliance.server import serve_until_signalled

    shared = index is not None
    daemon = await build(config, primary=not index, shared=shared)
    host, port = config.host_port
    await serve_until_signalled(
        daemon.app,
        host,
        port,
        zero_copy=config.zero_copy,
        side_servers=daemon.side_servers,
        notifier=notifier,
        reuse_port=shared,
    )
    return 0


def run(config: Config) -> int:
    """Serves with ``config.worker_count`` processes until SIGTERM or SIGINT."""
    return Supervisor(config, config.worker_count).run()
