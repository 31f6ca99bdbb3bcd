"""Run Debian's `skopeo` (1.9) hermetically against loopback registries.

Every call gets `--insecure-policy`, an empty `--registries-conf` (skopeo ignores
CONTAINERS_REGISTRIES_CONF), its own auth file, plain HTTP (`*-tls-verify=false`) and a
bounded timeout; a failure raises `SkopeoError` carrying the command and stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support.upstream import require_tool

Creds = tuple[str, str]


class SkopeoError(AssertionError):
    def __init__(self, args: list[str], returncode: int | None, stderr: str) -> None:
        self.argv = args
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"skopeo failed (exit {returncode}): {' '.join(args)}\n{stderr}")


def _creds(value: Creds | None) -> str | None:
    return None if value is None else f"{value[0]}:{value[1]}"


class Skopeo:
    def __init__(self, workdir: Path, *, timeout: float = 180.0) -> None:
        self.binary = require_tool("skopeo", "skopeo")
        self.workdir = workdir
        self.timeout = timeout
        workdir.mkdir(parents=True, exist_ok=True)
        self.registries_conf = workdir / "registries.conf"
        self.registries_conf.write_text("unqualified-search-registries = []\n")
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir(exist_ok=True)

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REGISTRY_AUTH_FILE", "CONTAINERS_", "DOCKER_"))
        }
        env["REGISTRY_AUTH_FILE"] = str(self.workdir / "auth.json")
        env["TMPDIR"] = str(self.tmpdir)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
        return env

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
        """`skopeo --insecure-policy --registries-conf F ARGS...`; raises SkopeoError on failure."""
        argv = [
            self.binary,
            "--insecure-policy",
            "--registries-conf",
            str(self.registries_conf),
            *args,
        ]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout or self.timeout,
                env=self._env(),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            err = (exc.stderr or b"").decode("utf-8", "replace")
            raise SkopeoError(argv, None, f"timed out after {exc.timeout}s\n{err}") from None
        if done.returncode != 0:
            raise SkopeoError(argv, done.returncode, done.stderr.decode("utf-8", "replace"))
        return done

    def copy(
        self,
        src: str,
        dst: str,
        *extra: str,
        all_images: bool = False,
        src_creds: Creds | None = None,
        dest_creds: Creds | None = None,
        timeout: float | None = None,
    ) -> str:
        """`skopeo copy SRC DST` over plain HTTP; returns stderr+stdout text (progress)."""
        args = ["copy", "--src-tls-verify=false", "--dest-tls-verify=false"]
        if all_images:
            args.append("--all")
        if (c := _creds(src_creds)) is not None:
            args += ["--src-creds", c]
        if (c := _creds(dest_creds)) is not None:
            args += ["--dest-creds", c]
        done = self.run(*args, *extra, src, dst, timeout=timeout)
        return (done.stdout + done.stderr).decode("utf-8", "replace")

    def _inspect_args(self, ref: str, creds: Creds | None) -> list[str]:
        args = ["inspect"]
        if ref.startswith("docker://"):
            args.append("--tls-verify=false")
        if (c := _creds(creds)) is not None:
            args += ["--creds", c]
        return args

    def inspect_raw(self, ref: str, *, creds: Creds | None = None) -> bytes:
        """The manifest bytes exactly as served (`skopeo inspect --raw`)."""
        return self.run(*self._inspect_args(ref, creds), "--raw", ref).stdout

    def inspect(self, ref: str, *, creds: Creds | None = None) -> dict[str, Any]:
        """`skopeo inspect` parsed (Digest, Layers, Architecture, Os, ...)."""
        out: dict[str, Any] = json.loads(self.run(*self._inspect_args(ref, creds), ref).stdout)
        return out

    def inspect_config(self, ref: str, *, creds: Creds | None = None) -> bytes:
        """The image config blob as served (`skopeo inspect --config --raw`)."""
        return self.run(*self._inspect_args(ref, creds), "--config", "--raw", ref).stdout
