"""Running a command whose stderr is a terminal (a pseudo-terminal the test reads), to
see what a person at the console sees: progress lines are drawn only on a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_with_terminal_stderr(
    cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Like ``subprocess.run(capture_output=True, text=True)``, but stderr is a pty."""
    master, slave = pty.openpty()
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer has gone
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=read, daemon=True)
    try:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=slave, text=True
        )
    finally:
        os.close(slave)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
        reader.join(timeout=10)
        os.close(master)
    stderr = b"".join(received).decode(errors="replace").replace("\r\n", "\n")
    return subprocess.CompletedProcess(list(cmd), proc.returncode, stdout, stderr)
