"""The shape every server wrapper of the tests and benchmarks shares: a child process
whose output goes to a log file, started and then awaited (over HTTP, or for a socket
file to appear), stopped with a
bounded SIGTERM (or killed), with the log's tail in every startup error."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

from tests.support.net import (
    StartupError,
    kill_process,
    log_tail,
    stop_process,
    wait_for_path,
    wait_for_text,
    wait_http,
)

# how long a server may take to answer after its start: a healthy one needs about a
# second, but a suite running beside other work on 2 cores has seen 20 s pass; a server
# that dies is noticed at once whatever this says
STARTUP_TIMEOUT = 60.0


class ServerProcess:
    """Subclasses set `name` and call `_launch` then `_await_ready` from their `start`."""

    name = "server"

    def __init__(self, log_path: Path, startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self.log_path = log_path  # what the startup error shows the tail of
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, max_bytes: int = 4000) -> str:
        return log_tail(self.log_path, max_bytes)

    def _launch(
        self,
        argv: Sequence[str],
        *,
        output: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Starts `argv` with stdout and stderr appended to `output` (the log by default)."""
        self._log = (output or self.log_path).open("ab")
        self._proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
        )

    def _await_ready(
        self, url: str, ready: Callable[[httpx.Response], bool], detail: str = ""
    ) -> None:
        """Returns once `url` answers as `ready` says (`detail` goes into the error)."""
        self._await(
            lambda: wait_http(url, ready=ready, proc=self._proc, timeout=self.startup_timeout),
            detail,
        )

    def _await_path(self, path: Path) -> None:
        """Returns once `path` exists (a socket the server creates when ready)."""
        self._await(lambda: wait_for_path(path, timeout=self.startup_timeout, proc=self._proc))

    def _await_log(self, text: str, offset: int) -> None:
        """Returns once the log says `text` after byte `offset`."""
        self._await(
            lambda: wait_for_text(
                self.log_path, text, offset=offset, timeout=self.startup_timeout, proc=self._proc
            )
        )

    def _await(self, wait: Callable[[], object], detail: str = "") -> None:
        """Runs `wait`; when it fails, stops the process and raises StartupError with
        `detail` and the log's tail."""
        try:
            wait()
        except StartupError as exc:
            self.stop()
            raise StartupError(
                f"{self.name}: {exc}\n{detail}--- {self.log_path} tail ---\n{self.log_tail()}"
            ) from None

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

    def wait_exit(self, timeout: float) -> int:
        """Waits (bounded) for the process to exit by itself, after a signal the test
        sent; returns the exit code. A second SIGTERM from `stop` would race the first
        one's shutdown."""
        assert self._proc is not None, f"{self.name} was not started"
        code = self._proc.wait(timeout=timeout)
        self._forget()
        return code

    def kill9(self) -> int | None:
        """SIGKILL now, as a crash would; files are left as the kill found them."""
        proc = self._proc
        code = None if proc is None else kill_process(proc)
        self._forget()
        return code
