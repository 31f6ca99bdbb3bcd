"""Relative paths on the command line of both programs, run as real processes in a fresh
working directory: every path option lands where a newcomer expects (under that directory),
for every command that takes it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.support.groundcontrol import groundcontrol_env
from tests.support.net import LOOPBACK, free_port
from tests.support.process import ServerProcess
from tests.support.satellite import satellite_command


def satellite_env() -> dict[str, str]:
    env = {k: v for k, v in groundcontrol_env().items() if not k.startswith("SATELLITE_")}
    return env


def run(cwd: Path, argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), cwd=cwd, env=satellite_env(), capture_output=True, timeout=60)
    assert done.returncode == 0, (argv, done.stderr.decode()[-2000:])
    return done.stdout.decode()


def gc(cwd: Path, *args: str) -> str:
    return run(cwd, [sys.executable, "-m", "groundcontrol", *args])


class CwdServer(ServerProcess):
    """A server command started in `cwd` on a free loopback port, awaited on `ready_path`."""

    def __init__(self, cwd: Path, argv: Sequence[str], ready_path: str) -> None:
        self.port = free_port()
        super().__init__(cwd / f"server-{self.port}.log")
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.cwd = cwd
        self.argv = [*argv, "--listen", f"{LOOPBACK}:{self.port}"]
        self.ready_path = ready_path

    def __enter__(self) -> CwdServer:
        self._launch(self.argv, env=satellite_env(), cwd=self.cwd)
        self._await_ready(self.url + self.ready_path, lambda r: r.status_code == 200)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop() == 0, self.log_tail()


def gc_server(cwd: Path, *args: str) -> CwdServer:
    return CwdServer(cwd, [sys.executable, "-m", "groundcontrol", "serve", *args], "/healthz")


def status_code(server: CwdServer, token: str) -> int:
    r = httpx.get(
        f"{server.url}/api/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    return r.status_code


def test_groundcontrol_relative_data_dir(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    with gc_server(cwd, "--data-dir", "./gc-data") as server:
        assert (cwd / "gc-data" / "gc.db").is_file()  # was /gc-data/gc.db
        assert list((cwd / "gc-data" / "keys").glob("state-*.pem"))
        # the local commands open the same database and keys through the same relative path
        token = gc(cwd, "admin", "token", "create", "ops", "--data-dir", "./gc-data").strip()
        assert status_code(server, token) == 200
        assert "up to date" in gc(cwd, "migrate", "--data-dir", "gc-data")
        assert json.loads(gc(cwd, "keys", "show", "--data-dir", "gc-data"))["version"] == 1
        listing = json.loads(gc(cwd, "admin", "token", "list", "--data-dir", "gc-data", "--json"))
        assert [t["name"] for t in listing["tokens"]] == ["ops"]
    assert sorted(p.name for p in cwd.iterdir() if p.is_dir()) == ["gc-data"]


def test_groundcontrol_relative_config_and_sqlite_url(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    (cwd / "etc").mkdir(parents=True)
    (cwd / "etc" / "gc.toml").write_text('[server]\ndata_dir = "cfg-data"\n')
    config = ["--config", "etc/gc.toml"]
    database = ["--database", "sqlite:///db/gc.db"]
    assert "applied migrations" in gc(cwd, "migrate", *config, *database)
    assert (cwd / "db" / "gc.db").is_file()
    gc(cwd, "keys", "init", *config, *database)
    assert list((cwd / "cfg-data" / "keys").glob("root-*.pem"))
    token = gc(cwd, "admin", "token", "create", "ops", *config, *database).strip()
    with gc_server(cwd, *config, *database) as server:
        assert status_code(server, token) == 200
    assert not (cwd / "cfg-data" / "gc.db").exists()  # --database wins over the data dir

    # the database URL in the config file (and from the environment) is relative too
    (cwd / "etc" / "gc2.toml").write_text(
        '[server]\ndata_dir = "cfg2"\n[database]\nurl = "sqlite:///db2/gc.db"\n'
    )
    token = gc(cwd, "admin", "token", "create", "ops", "--config", "etc/gc2.toml").strip()
    assert (cwd / "db2" / "gc.db").is_file()
    with gc_server(cwd, "--config", "etc/gc2.toml") as server:
        assert status_code(server, token) == 200


def test_groundcontrol_refuses_a_database_url_it_cannot_open(tmp_path: Path) -> None:
    for bad in ("sqlite://gc.db", "sqlite:///", "mysql://x/y"):
        done = subprocess.run(
            [sys.executable, "-m", "groundcontrol", "migrate", "--database", bad],
            cwd=tmp_path,
            env=satellite_env(),
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 1, bad
        assert "error: config: --database: expected sqlite:///PATH" in done.stderr.decode()
        assert "Traceback" not in done.stderr.decode()


def test_satellite_relative_data_dir_and_config(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    with CwdServer(cwd, [*satellite_command(), "run", "--data-dir", "./sat-data"], "/v2/"):
        assert (cwd / "sat-data" / "metadata.db").is_file()
    out = run(cwd, [*satellite_command(), "verify", "--data-dir", "sat-data"])
    assert "0 corrupt" in out

    (cwd / "conf").mkdir()
    (cwd / "conf" / "sat.toml").write_text('[storage]\npath = "cfg-sat"\n')
    argv = [*satellite_command(), "run", "--config", "conf/sat.toml"]
    with CwdServer(cwd, argv, "/v2/"):
        assert (cwd / "cfg-sat" / "metadata.db").is_file()
    out = run(cwd, [*satellite_command(), "verify", "--config", "conf/sat.toml"])
    assert "0 corrupt" in out
    assert sorted(p.name for p in cwd.iterdir() if p.is_dir()) == ["cfg-sat", "conf", "sat-data"]
