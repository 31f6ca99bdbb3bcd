"""Loopback networking helpers shared by the test fixtures: free ports and readiness waits."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, max_bytes: int = 4000) -> str:
    """The last `max_bytes` of a log file, for error messages; empty if there is none."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


class StartupError(RuntimeError):
    """A server process did not become ready; the message carries its log tail."""


def wait_http(
    url: str,
    *,
    ready: Callable[[httpx.Response], bool],
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> httpx.Response:
    """Poll `url` until `ready(response)` holds; bounded by `timeout` and an attempt count.

    Fails early when `proc` exits. Raises `StartupError` on timeout or early exit.
    """
    deadline = time.monotonic() + timeout
    max_attempts = int(timeout / interval) + 1
    last: str = "no attempt made"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        for _ in range(max_attempts):
            if proc is not None and proc.poll() is not None:
                raise StartupError(
                    f"process exited with code {proc.returncode} before {url} answered"
                )
            try:
                response = client.get(url)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if ready(response):
                    return response
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
    raise StartupError(f"{url} not ready after {timeout:.0f}s (last: {last})")


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> int:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=grace)


def kill_process(proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> int:
    """SIGKILL at once (a crash), then reap; returns the exit code."""
    if proc.poll() is None:
        proc.kill()
    return proc.wait(timeout=grace)


def _wait_until(
    done: Callable[[], bool],
    what: str,
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Blocks until `done()` (`what`: what it waits for, said in the error); bounded, and
    failing at once if `proc` (the server that should bring it about) exits."""
    deadline = time.monotonic() + timeout
    while not done():
        if proc is not None and proc.poll() is not None:
            raise StartupError(f"exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() >= deadline:
            raise StartupError(f"waited {timeout:g}s for {what}")
        time.sleep(interval)


def wait_for_path(
    path: Path,
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Blocks until `path` exists (a socket a server creates when ready)."""
    _wait_until(path.exists, f"{path} to appear", timeout=timeout, interval=interval, proc=proc)


def wait_for_text(
    path: Path,
    text: str,
    *,
    offset: int = 0,
    timeout: float = 20.0,
    interval: float = 0.05,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Blocks until `text` appears in the file at `path` after byte `offset` (a line a
    server logs once it is fully up)."""
    needle = text.encode()

    def said() -> bool:
        try:
            with path.open("rb") as file:
                file.seek(offset)
                return needle in file.read()
        except FileNotFoundError:
            return False

    _wait_until(said, f"{path} to say {text!r}", timeout=timeout, interval=interval, proc=proc)
