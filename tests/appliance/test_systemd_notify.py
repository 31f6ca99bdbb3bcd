"""The notify protocol against a real NOTIFY_SOCKET datagram listener: READY=1 only once
the store is open and the port answers, STATUS= lines, WATCHDOG=1 pings from the event
loop (a wedged loop, or a stopped process, misses them) and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance import notify
from appliance.config import Config
from appliance.notify import Notifier
from appliance.workers import Supervisor, _WorkerNotifier
from tests.support.satellite import SatelliteProcess

WATCHDOG_USEC = 200_000  # a ping every 0.1 s


class NotifyListener:
    """What systemd does with NOTIFY_SOCKET: a bound AF_UNIX datagram socket; each
    datagram is one message of KEY=VALUE lines."""

    def __init__(self, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"satellite-test-{os.getpid()}-{id(self)}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            # unix socket paths are short: keep it under /tmp
            self.dir = tempfile.mkdtemp(prefix="notify.", dir="/tmp")
            self.address = os.path.join(self.dir, "notify.sock")
            self.sock.bind(self.address)
        self.received: list[tuple[float, dict[str, str]]] = []

    def recv(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append((time.monotonic(), message))
        return message

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """The next message carrying `key`; bounded by `timeout` and a message count."""
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            message = self.recv(left)
            if message is not None and key in message:
                return message
        raise AssertionError(f"no {key} within {timeout}s; got {self.received[-5:]}")

    def drain(self) -> None:
        while self.recv(0.01) is not None:
            pass

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)
            os.rmdir(self.dir)


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    sock = NotifyListener()
    yield sock
    sock.close()


class NotifiedSatellite(SatelliteProcess):
    """`satellite run` under a NOTIFY_SOCKET; start() returns at READY=1, not at a poll."""

    def __init__(self, root: Path, listener: NotifyListener, workers: int = 1) -> None:
        super().__init__(
            root,
            env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)},
            workers=workers,
        )
        self.listener = listener

    def start(self) -> NotifiedSatellite:
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self.config_text)
        self._launch(self.command(), env=self._env(), cwd=self.root)
        return self


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_real_satellite_speaks_the_notify_protocol(
    listener: NotifyListener, tmp_path: Path, workers: int
) -> None:
    """With several serving processes the supervisor speaks for them: READY=1 once every
    worker serves, the watchdog from its loop, STOPPING=1 and a graceful stop of all."""
    sat = NotifiedSatellite(tmp_path / "sat", listener, workers).start()
    try:
        ready = listener.wait_for("READY")
        # READY=1 means the store is open and the port bound: the first request answers
        with httpx.Client(trust_env=False, timeout=10) as http:
            assert http.get(f"{sat.url}/v2/").status_code == 200
            assert http.get(f"{sat.url}/readyz").json()["status"] == "ready"
        assert ready["READY"] == "1"
        expected = f"serving on {sat.host}"
        if workers > 1:
            expected += f" with {workers} workers"
            # every worker serves, a process of its own
            assert len(_children(sat.pid)) == workers
        assert ready["STATUS"] == expected
        for _ in range(3):
            assert listener.wait_for("WATCHDOG", timeout=10)["WATCHDOG"] == "1"

        # a stopped process sends nothing: systemd's watchdog would fire
        assert sat.pid is not None
        os.kill(sat.pid, signal.SIGSTOP)
        try:
            listener.drain()
            assert listener.recv(15 * WATCHDOG_USEC / 1e6) is None
        finally:
            os.kill(sat.pid, signal.SIGCONT)
        listener.wait_for("WATCHDOG", timeout=10)

        assert sat.pid is not None
        os.kill(sat.pid, signal.SIGTERM)
        children = _children(sat.pid)
        stopping = listener.wait_for("STOPPING")
        assert stopping["STATUS"] == "stopping"
        assert sat.wait_exit(timeout=30) == 0  # a graceful stop, well within TimeoutStopSec
        assert not any(Path(f"/proc/{child}").exists() for child in children)
    finally:
        sat.stop()


def _children(pid: int | None) -> list[int]:
    assert pid is not None
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_a_wedged_event_loop_misses_its_watchdog_pings(listener: NotifyListener) -> None:
    notifier = Notifier(listener.address, WATCHDOG_USEC)
    wedge: dict[str, float] = {}
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            listener.recv(0.05)

    async def main() -> None:
        task = asyncio.create_task(notifier.watchdog())
        await asyncio.sleep(0.5)
        wedge["start"] = time.monotonic()
        time.sleep(1.0)  # noqa: ASYNC251 - the wedge: a blocking call stops the loop
        wedge["end"] = time.monotonic()
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    thread = threading.Thread(target=listen)
    thread.start()
    try:
        asyncio.run(main())
    finally:
        stop.set()
        thread.join(timeout=10)
        notifier.close()
    pings = [at for at, message in listener.received if message == {"WATCHDOG": "1"}]
    before = [at for at in pings if at < wedge["start"]]
    # a ping sent just before the wedge may be read a moment later: allow 0.2 s for that
    during = [at for at in pings if wedge["start"] + 0.2 < at <= wedge["end"]]
    after = [at for at in pings if at > wedge["end"]]
    assert len(before) >= 2
    assert during == []
    assert len(after) >= 2


def test_status_fields_are_updated_and_removed(listener: NotifyListener) -> None:
    notifier = Notifier(listener.address)
    notifier.set_status(state_version=12, outbox_depth=3)
    assert listener.wait_for("STATUS")["STATUS"] == "starting; state_version=12 outbox_depth=3"
    notifier.ready("serving on 0.0.0.0:8585")
    message = listener.wait_for("READY")
    assert message["STATUS"] == "serving on 0.0.0.0:8585; state_version=12 outbox_depth=3"
    notifier.set_status(outbox_depth=None, state_version=13)
    assert listener.wait_for("STATUS")["STATUS"] == "serving on 0.0.0.0:8585; state_version=13"
    notifier.close()


def test_a_workers_status_fields_reach_systemd_through_its_supervisor(
    listener: NotifyListener, tmp_path: Path
) -> None:
    """With several serving processes the fleet agent's STATUS= fields are set in worker
    0, which has no NOTIFY_SOCKET: they go over the supervisor's pipe and out on its line."""
    read_fd, write_fd = os.pipe()
    worker = _WorkerNotifier(write_fd, 0, heartbeat=1.0)
    supervisor = Supervisor(Config(data_dir=tmp_path), 2)
    supervisor.notifier = Notifier(listener.address)
    try:
        worker.ready("serving on 127.0.0.1:1")
        worker.set_status(state_version=12, outbox_depth=3)
        worker.set_status(outbox_depth=None, state_version=13)
        messages = os.read(read_fd, 4096).decode().splitlines()
        assert messages == ["R0", "S0 state_version=12 outbox_depth=3", "S0 state_version=13"]
        for message in messages:
            supervisor.handle(message)
        assert supervisor.ready == {0}
        first = listener.wait_for("STATUS")["STATUS"]
        assert first == "starting; state_version=12 outbox_depth=3"
        assert listener.wait_for("STATUS")["STATUS"] == "starting; state_version=13"
    finally:
        supervisor.notifier.close()
        for fd in (read_fd, write_fd):
            os.close(fd)


def test_abstract_socket_and_environment() -> None:
    abstract = NotifyListener(abstract=True)
    try:
        notifier = Notifier.from_environ(
            {"NOTIFY_SOCKET": abstract.address, "WATCHDOG_USEC": "5000000"}
        )
        assert notifier.watchdog_interval == 2.5
        assert notifier.send("READY=1")
        assert abstract.wait_for("READY") == {"READY": "1"}
        notifier.close()
    finally:
        abstract.close()
    # another process's watchdog (WATCHDOG_PID) is not ours; no socket: every call a no-op
    other = Notifier.from_environ(
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    )
    assert other.watchdog_interval is None
    silent = Notifier.from_environ({})
    assert not silent.enabled
    assert not silent.send("READY=1")
    silent.set_status(state_version=1)  # a no-op, never an error


def test_the_process_notifier_is_made_once_from_the_environment(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "_current", None)
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    assert notify.current() is notify.current()
    notify.current().set_status(outbox_depth=0)
    assert listener.wait_for("STATUS")["STATUS"] == "starting; outbox_depth=0"
    notify.current().close()
