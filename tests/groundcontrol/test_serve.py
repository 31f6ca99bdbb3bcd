"""`groundcontrol serve` as real processes on hypercorn: two stateless processes sharing one
PostgreSQL, the default SQLite database, the operator CLI against them, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from groundcontrol.cli import main
from groundcontrol.contract import ImageStatus
from tests.groundcontrol.fleet import SimSatellite
from tests.support.groundcontrol import GroundControlProcess, groundcontrol_env
from tests.support.postgres import PostgresCluster

ROOT = Path(__file__).resolve().parents[2]


def gc(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "groundcontrol", *args],
        cwd=ROOT,
        env=groundcontrol_env(),
        input=stdin.encode() if stdin is not None else None,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    url = asyncio.run(pg_cluster.create_database("serve"))
    yield url
    asyncio.run(pg_cluster.drop_database(url))


async def test_two_processes_serve_one_postgresql(tmp_path: Path, pg_url: str) -> None:
    data = tmp_path / "shared"  # the key directory is shared, as documented
    a = GroundControlProcess(tmp_path, "--database", pg_url, "--data-dir", str(data)).launch()
    b = GroundControlProcess(tmp_path, "--database", pg_url, "--data-dir", str(data)).launch()
    try:
        a.wait()
        b.wait()
        token = gc(
            "admin", "token", "create", "ops", "--database", pg_url, "--data-dir", str(data)
        ).strip()
        remote = ["--url", a.url, "--token", token]
        gc("group", "create", "shops", *remote)
        join = gc(
            "satellite", "create", "s1", "--group", "shops", "--label", "site=x", *remote
        ).strip()
        assert join.startswith("gcj_")

        async with (
            httpx.AsyncClient(base_url=b.url) as on_b,
            httpx.AsyncClient(base_url=a.url) as on_a,
        ):
            sat = SimSatellite(on_b, "s1")
            await sat.register(join, time.time())
            sat.client = on_a
            doc = await sat.state(time.time())
            assert doc.version == 1 and doc.satellite == "s1"
            sat.client = on_b
            ok = ImageStatus("library/app", "sha256:" + "a" * 64, "present")
            r = await sat.post([sat.checkin(time.time(), 1, (ok,)), sat.checkin(time.time(), 1)])
            assert r.json()["accepted"] == [1, 2]
            # the same report again, through the other process: a duplicate
            sat.client = on_a
            r = await sat.post([sat.checkin(time.time(), 1, seq=2)])
            assert r.json()["duplicates"] == [2]

        status = json.loads(gc("status", "--json", "--url", b.url, "--token", token))
        assert status["satellites"][0]["name"] == "s1"
        assert status["satellites"][0]["status"] == "online"
        assert status["satellites"][0]["applied_version"] == 1
        table = gc("satellite", "list", *remote)
        assert "s1" in table and "online" in table
    finally:
        codes = (a.stop(), b.stop())
    assert codes == (0, 0), a.log_tail() + b.log_tail()
    assert len(list((data / "keys").glob("state-*.pem"))) == 1


def test_default_sqlite_database_and_migrate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = GroundControlProcess(tmp_path, "--data-dir", str(data)).launch()
    try:
        server.wait()
        assert (data / "gc.db").exists()
        out = gc("migrate", "--data-dir", str(data))
        assert "up to date" in out
        token = gc("admin", "token", "create", "ops", "--data-dir", str(data)).strip()
        keys = json.loads(gc("keys", "show", "--data-dir", str(data)))
        assert keys["version"] == 1
        listing = json.loads(gc("admin", "token", "list", "--json", "--data-dir", str(data)))
        assert [t["name"] for t in listing["tokens"]] == ["ops"]
        r = httpx.get(f"{server.url}/api/v1/status", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["counts"] == {}
    finally:
        assert server.stop() == 0


def test_bad_config_is_refused_with_the_key_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gc.toml"
    config.write_text('[status]\nstale_after = "soon"\n')
    assert main(["serve", "--config", str(config)]) == 1
    assert "status.stale_after" in capsys.readouterr().err
    config.write_text("[server]\nlisten = 8080\n")
    assert main(["migrate", "--config", str(config)]) == 1
    assert "server.listen" in capsys.readouterr().err
    assert main(["serve", "--listen", "nope", "--data-dir", str(tmp_path)]) == 1
    assert "--listen" in capsys.readouterr().err
