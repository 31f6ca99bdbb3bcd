"""Debian's `podman` (4.3) without a daemon, its storage and state in temp dirs.

    podman = Podman(tmp_path / "podman", env={"CONTAINERS_REGISTRIES_CONF": str(conf)})
    podman.run("pull", "app:v1")            # raises PodmanError with stderr on failure
    podman.run("run", "--rm", *Podman.RUN_FLAGS, "IMAGE")
    podman.close()                          # removes the short runroot under /tmp

vfs storage, the file events backend and cgroupfs: what works here (see TESTBED.md).
Every client that would leave the machine meets a closed loopback port as its proxy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.support.upstream import require_tool

# a client that tries to leave the machine meets a closed loopback port instead
OFFLINE_ENV = {
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost,::1",
    "no_proxy": "127.0.0.1,localhost,::1",
}


class PodmanError(AssertionError):
    pass


class Podman:
    # `podman run` flags that work on this machine (runc, cgroupfs, no network setup)
    RUN_FLAGS = (
        "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
        "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
    )  # fmt: skip

    def __init__(self, workdir: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.binary = require_tool("podman", "podman")
        self.workdir = workdir
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        # podman refuses a runroot path longer than 50 characters
        self.runroot = Path(tempfile.mkdtemp(prefix="podrun.", dir="/tmp"))
        self.env = {
            **os.environ,
            **OFFLINE_ENV,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local/share"),
            **(env or {}),
        }
        self.global_flags = [
            "--root", str(workdir / "storage"), "--runroot", str(self.runroot),
            "--storage-driver", "vfs", "--events-backend", "file", "--cgroup-manager", "cgroupfs",
        ]  # fmt: skip

    def run(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [self.binary, *self.global_flags, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)
