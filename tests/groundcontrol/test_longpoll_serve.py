"""Long-poll across real `groundcontrol serve` processes: a publish through one process
wakes a waiter held by another on the same PostgreSQL (LISTEN/NOTIFY), also after the
listening connection was dropped; SIGTERM answers held long-polls at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from groundcontrol.db import postgres
from groundcontrol.services import Services
from tests.groundcontrol.conftest import FakeClock
from tests.groundcontrol.fleet import SimSatellite
from tests.groundcontrol.test_api import registered
from tests.groundcontrol.test_longpoll import STATE, long_poll, waiting
from tests.groundcontrol.test_serve import gc
from tests.support.groundcontrol import GroundControlProcess
from tests.support.postgres import PostgresCluster

LISTENERS = "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = $2"


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    url = asyncio.run(pg_cluster.create_database("longpoll"))
    yield url
    asyncio.run(pg_cluster.drop_database(url))


async def listener_pids(url: str) -> set[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(LISTENERS, postgres.LISTEN_APPLICATION_NAME, url.rsplit("/", 1)[1])
    finally:
        await conn.close()
    return {int(r["pid"]) for r in rows}


async def terminate_listeners(url: str) -> set[int]:
    pids = await listener_pids(url)
    conn = await asyncpg.connect(url)
    try:
        for pid in pids:
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()
    return pids


async def until_listeners(url: str, condition: str, check: object) -> set[int]:
    """Poll pg_stat_activity (bounded) until `check(pids)` holds."""
    assert callable(check)
    for _ in range(400):
        pids = await listener_pids(url)
        if check(pids):
            return pids
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {condition}")


async def woken_across_processes(
    a: GroundControlProcess, b: GroundControlProcess, token: str
) -> None:
    """Two long-polls on A, which admits one waiter: the other is refused (so the first
    is provably waiting); a publish through B must then answer it with the new state."""
    op = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=a.url) as on_a, httpx.AsyncClient(base_url=b.url) as on_b:
        r = await on_b.get("/api/v1/satellites/s1", headers=op)
        have = r.json()["published_version"]
        polls = [long_poll(on_a, op, have=have), long_poll(on_a, op, have=have)]
        done, pending = await asyncio.wait(polls, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(pending) == 1
        refused = done.pop().result()
        assert refused.status_code == 503, refused.text
        r = await on_b.post("/api/v1/satellites/s1/publish", headers=op)
        assert r.json()["published"] == [{"satellite": "s1", "version": have + 1}]
        answer = await pending.pop()
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-State-Version"] == str(have + 1)
        assert answer.headers["X-State-Wait"] == "30"


async def test_a_publish_through_one_process_wakes_a_waiter_on_another(
    tmp_path: Path, pg_url: str
) -> None:
    data = tmp_path / "shared"
    config = tmp_path / "a.toml"
    config.write_text('[state]\nlong_poll_max = "30s"\nlong_poll_waiters = 1\n')
    common = ("--database", pg_url, "--data-dir", str(data))
    a = GroundControlProcess(tmp_path, *common, "--config", str(config)).launch()
    b = GroundControlProcess(tmp_path, *common).launch()
    try:
        a.wait()
        b.wait()
        token = gc("admin", "token", "create", "ops", *common).strip()
        gc("satellite", "create", "s1", "--url", b.url, "--token", token)
        await until_listeners(pg_url, "two listening connections", lambda p: len(p) == 2)

        await woken_across_processes(a, b, token)

        # drop both processes' LISTEN connections: they come back, and wake-ups work again
        dropped = await terminate_listeners(pg_url)
        await until_listeners(
            pg_url, "two new listening connections", lambda p: len(p) == 2 and not p & dropped
        )
        await woken_across_processes(a, b, token)
    finally:
        codes = (a.stop(), b.stop())
    assert codes == (0, 0), a.log_tail() + b.log_tail()


async def test_a_publish_while_the_listener_is_down_is_not_missed(
    tmp_path: Path, pg_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notification of a publish that commits while this process is not listening is
    lost; the re-read after the reconnect answers the waiter all the same."""
    from groundcontrol.config import Config

    monkeypatch.setattr(postgres, "LISTEN_RETRY_MIN", 1.0)  # a gap the publish falls into
    config = Config(listen="127.0.0.1:0", data_dir=tmp_path / "gc", database=pg_url)
    waiter_side = await Services.open(config, clock=clock, listen=True)
    publisher_side = await Services.open(config, clock=clock)
    try:
        from groundcontrol.app import build_app
        from groundcontrol.auth import hash_token, new_operator_token

        token_id, token = new_operator_token()
        async with waiter_side.store.transaction() as q:
            await q.insert_api_token(token_id, "ops", hash_token(token), int(clock.now))
        op = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=build_app(waiter_side))
        async with httpx.AsyncClient(transport=transport, base_url="http://gc") as client:
            await registered(client, op, clock, "s1")
            await until_listeners(pg_url, "the listener", lambda p: len(p) == 1)
            task = long_poll(client, op, have=1)
            await waiting(waiter_side)
            dropped = await terminate_listeners(pg_url)
            await until_listeners(pg_url, "the listener gone", lambda p: not p)
            await publisher_side.publisher.publish_now(["s1"], clock.now, force=True)
            answer = await task
            assert answer.status_code == 200 and answer.headers["X-State-Version"] == "2"
            assert not (await listener_pids(pg_url)) & dropped
    finally:
        await publisher_side.close()
        await waiter_side.close()


async def held_poll(
    client: httpx.AsyncClient, headers: dict[str, str], have: int, probe: dict[str, str]
) -> asyncio.Task[httpx.Response]:
    """A long-poll that is provably waiting: the server admits one waiter, so a probing
    long-poll is refused with 503 exactly while the poll holds the place."""
    for _ in range(20):
        task = long_poll(client, headers, have)
        await asyncio.sleep(0.2)  # let it reach the server first (the loop copes if not)
        for _ in range(20):
            params = {"have": str(have), "wait": "1"}
            r = await client.get(STATE, params=params, headers=probe)
            if r.status_code == 503:
                return task
            if task.done():  # the probe held the place when the poll came: try again
                assert (await task).status_code == 503
                break
    raise AssertionError("the long-poll never got to wait")


def test_sigterm_answers_held_long_polls(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "gc.toml"
    config.write_text("[state]\nlong_poll_waiters = 1\n")
    server = GroundControlProcess(tmp_path, "--data-dir", str(data), "--config", str(config))
    server.launch()
    try:
        server.wait()
        token = gc("admin", "token", "create", "ops", "--data-dir", str(data)).strip()
        join = gc("satellite", "create", "s1", "--url", server.url, "--token", token).strip()
        op = {"Authorization": f"Bearer {token}"}

        async def scenario() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url) as client:
                sat = SimSatellite(client, "s1")
                await sat.register(join, time.time())
                # woken by a publish on the same process (SQLite: in-process wake-up)
                first = await held_poll(client, sat.headers, 1, op)
                await client.post("/api/v1/satellites/s1/publish", headers=op)
                woken = await first
                # held, then the server is told to stop
                second = await held_poll(client, sat.headers, 2, op)
                assert server.pid is not None
                os.kill(server.pid, signal.SIGTERM)
                return woken, await asyncio.wait_for(second, 30)

        woken, released = asyncio.run(scenario())
        assert woken.status_code == 200 and woken.headers["X-State-Version"] == "2"
        assert released.status_code == 304 and released.headers["X-State-Wait"] == "60"
        code = server.wait_exit(timeout=30)  # the one SIGTERM stops it, cleanly
        assert code == 0, server.log_tail()
    finally:
        server.stop()
