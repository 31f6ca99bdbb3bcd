"""Long-poll for state (`?have=N&wait=S`), in process on both backends: a waiter is woken
by a publish, answered 304 at the deadline, never misses a publish that commits between
its read and its wait, is ended by a revocation and by shutdown, and the number of
waiters is bounded. The cross-process cases (LISTEN/NOTIFY, SIGTERM) are in
test_longpoll_serve.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from groundcontrol.api import agent
from groundcontrol.api.base import Ctx
from groundcontrol.config import Config, load_config
from groundcontrol.contract import verify_state
from groundcontrol.db import Database
from groundcontrol.services import Services
from groundcontrol.store import Store
from groundcontrol.watch import STATE_CHANNEL, StateWatch, notify_payloads
from registry_proxy.units import ConfigError
from tests.groundcontrol.conftest import FakeClock
from tests.groundcontrol.fleet import at
from tests.groundcontrol.test_api import error, registered

STATE = "/api/v1/satellites/s1/state"


@pytest.fixture
def gc_config(gc_config: Config) -> Config:
    # short enough that a waiter nobody wakes fails its test in seconds, not a minute
    return dataclasses.replace(gc_config, long_poll_max=15)


def long_poll(
    client: httpx.AsyncClient, headers: dict[str, str], have: int, wait: str = "60"
) -> asyncio.Task[httpx.Response]:
    params = {"have": str(have), "wait": wait}
    return asyncio.create_task(client.get(STATE, params=params, headers=headers, timeout=120))


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition of this process (bounded)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def waiting(services: Services, name: str = "s1", n: int = 1) -> None:
    await until(lambda: services.watch.waiting_for(name) == n, f"{n} waiter(s) on {name}")


async def test_a_waiter_is_woken_by_a_publish(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sat = await registered(client, op, clock, "s1")
    task = long_poll(client, sat.headers, have=1)
    await waiting(services)
    r = await client.patch(
        "/api/v1/satellites/s1", json={"config": {"state_interval": 7}}, headers=op
    )
    assert r.json()["published"] == [{"satellite": "s1", "version": 2}]
    answer = await task
    assert answer.status_code == 200
    assert answer.headers["X-State-Version"] == "2" and answer.headers["X-State-Wait"] == "15"
    assert sat.root is not None
    doc = verify_state(answer.content, sat.root, "s1", at(clock.now), 1)
    assert doc.version == 2 and doc.config["state_interval"] == 7
    assert services.watch.waiting == 0


async def test_a_publish_for_another_satellite_does_not_answer(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sat = await registered(client, op, clock, "s1")
    await registered(client, op, clock, "s2")
    services.config = dataclasses.replace(services.config, long_poll_max=1)
    task = long_poll(client, sat.headers, have=1)
    await waiting(services)
    await client.patch("/api/v1/satellites/s2", json={"config": {"state_interval": 7}}, headers=op)
    answer = await task
    assert answer.status_code == 304 and answer.headers["X-State-Wait"] == "1"
    assert answer.headers["X-State-Version"] == "1"


async def test_the_deadline_answers_304(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sat = await registered(client, op, clock, "s1")
    services.config = dataclasses.replace(services.config, long_poll_max=1)
    r = await client.get(STATE, params={"have": "1", "wait": "30"}, headers=sat.headers)
    assert r.status_code == 304 and r.content == b""
    assert r.headers["X-State-Wait"] == "1" and r.headers["X-State-Version"] == "1"
    # newer than `have`: at once, with the header that tells long-poll is supported
    r = await client.get(STATE, params={"have": "0", "wait": "30"}, headers=sat.headers)
    assert r.status_code == 200 and r.headers["X-State-Wait"] == "1"
    # without wait: no header (a satellite falls back to polling when it is absent)
    r = await client.get(STATE, params={"have": "1"}, headers=sat.headers)
    assert r.status_code == 304 and "X-State-Wait" not in r.headers
    r = await client.get(STATE, params={"have": "1", "wait": "0"}, headers=op)  # operator too
    assert r.status_code == 304 and r.headers["X-State-Wait"] == "0"


@pytest.mark.parametrize("publish_after_read", [1, 2])
async def test_a_publish_between_the_read_and_the_wait_is_not_missed(
    client: httpx.AsyncClient,
    op: dict[str, str],
    clock: FakeClock,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    publish_after_read: int,
) -> None:
    """Read 1 comes before the waiter subscribes, read 2 after it (then it waits): a
    version committed right after either read must still be answered at once."""
    sat = await registered(client, op, clock, "s1")
    original = agent._satellite_state
    reads = 0

    async def read_then_publish(ctx: Ctx, name: str) -> Any:
        nonlocal reads
        reads += 1
        result = await original(ctx, name)
        if reads == publish_after_read:  # the reader has seen version 1; 2 commits now
            await services.publisher.publish_now([name], ctx.now, force=True)
        return result

    monkeypatch.setattr(agent, "_satellite_state", read_then_publish)
    r = await client.get(STATE, params={"have": "1", "wait": "60"}, headers=sat.headers)
    assert r.status_code == 200 and r.headers["X-State-Version"] == "2"
    assert reads == publish_after_read + 1


async def test_revocation_ends_the_waiters(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sat = await registered(client, op, clock, "s1")
    by_satellite = long_poll(client, sat.headers, have=1)
    by_operator = long_poll(client, op, have=1)
    await waiting(services, n=2)
    r = await client.post("/api/v1/satellites/s1/revoke", headers=op)
    assert r.status_code == 200
    answer = await by_satellite
    assert answer.status_code == 403 and error(answer) == "satellite_revoked"
    assert (await by_operator).status_code == 304


async def test_deleting_the_satellite_ends_its_waiters(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    await registered(client, op, clock, "s1")
    task = long_poll(client, op, have=1)
    await waiting(services)
    assert (await client.delete("/api/v1/satellites/s1", headers=op)).status_code == 204
    answer = await task
    assert answer.status_code == 404 and error(answer) == "satellite_not_found"


async def test_waiters_are_bounded(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sat = await registered(client, op, clock, "s1")
    services.watch.max_waiters = 1
    task = long_poll(client, sat.headers, have=1)
    await waiting(services)
    r = await client.get(STATE, params={"have": "1", "wait": "5"}, headers=op)
    assert r.status_code == 503 and error(r) == "too_many_waiters"
    # a request with nothing to wait for is still answered
    r = await client.get(STATE, params={"have": "0", "wait": "5"}, headers=op)
    assert r.status_code == 200
    await services.publisher.publish_now(["s1"], clock.now, force=True)
    assert (await task).status_code == 200


async def test_closing_the_watch_releases_waiters_at_once(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sat = await registered(client, op, clock, "s1")
    tasks = [long_poll(client, sat.headers, have=1), long_poll(client, op, have=1)]
    await waiting(services, n=2)
    services.watch.close()  # what `groundcontrol serve` does on SIGTERM
    answers = await asyncio.gather(*tasks)
    assert [a.status_code for a in answers] == [304, 304]
    # and nothing waits afterwards
    r = await client.get(STATE, params={"have": "1", "wait": "60"}, headers=op)
    assert r.status_code == 304


@pytest.mark.parametrize(
    "wait", ["", "-1", "+1", "1.5", "1e3", " 1", "\uff11", "\u0661", "1234567", "0x10"]
)
async def test_bad_wait_values_are_refused(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, wait: str
) -> None:
    await registered(client, op, clock, "s1")
    r = await client.get(STATE, params={"have": "1", "wait": wait}, headers=op)
    assert r.status_code == 400 and error(r) == "invalid_wait"


async def test_a_long_wait_is_capped(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    await registered(client, op, clock, "s1")
    services.config = dataclasses.replace(services.config, long_poll_max=1)
    r = await client.get(STATE, params={"have": "1", "wait": "999999"}, headers=op)
    assert r.status_code == 304 and r.headers["X-State-Wait"] == "1"


def test_notify_payloads_stay_under_the_postgresql_limit() -> None:
    names = [f"satellite-{i:06d}" for i in range(10_000)]
    payloads = notify_payloads(names + names[:10])
    assert all(len(p.encode()) <= 7900 for p in payloads) and len(payloads) > 1
    assert sorted(n for p in payloads for n in p.split(",")) == sorted(names)
    assert notify_payloads(["b", "a"], limit=3) == ["a,b"]
    assert notify_payloads(["b", "a", "c"], limit=3) == ["a,b", "c"]
    assert notify_payloads([]) == []


async def test_a_notification_wakes_only_the_named_satellites() -> None:
    watch = StateWatch(max_waiters=10)
    with watch.subscribe("a") as a, watch.subscribe("b") as b, watch.subscribe("c") as c:
        watch.on_notify("a,c")
        assert (a.is_set(), b.is_set(), c.is_set()) == (True, False, True)
        watch.on_connect()  # after a reconnect every waiter re-reads
        assert b.is_set()
    assert watch.waiting == 0


def test_long_poll_options(tmp_path: Path) -> None:
    path = tmp_path / "gc.toml"
    path.write_text('[state]\nlong_poll_max = "2m"\nlong_poll_waiters = 5\n')
    config = load_config(path, environ={})
    assert (config.long_poll_max, config.long_poll_waiters) == (120, 5)
    assert load_config(None, environ={}).long_poll_max == 60
    for bad in ('long_poll_max = "2h"', "long_poll_waiters = -1", 'long_poll_max = "soon"'):
        path.write_text(f"[state]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"state\.long_poll_"):
            load_config(path, environ={})


async def test_a_big_publish_is_announced_whole(db: Database) -> None:
    """3,000 satellites of 60-character names: more than one NOTIFY payload can carry;
    the listener (PostgreSQL) and this process's callback each hear every name once the
    transaction commits, and nothing before."""
    names = {f"{i:06d}-" + "x" * 53 for i in range(3000)}
    local: set[str] = set()
    heard: set[str] = set()
    connected = asyncio.Event()
    listener = asyncio.create_task(
        db.listen(STATE_CHANNEL, lambda p: heard.update(p.split(",")), connected.set)
    )
    try:
        if db.dialect == "postgresql":
            await asyncio.wait_for(connected.wait(), 30)
        store = Store(db, on_state_change=local.update)
        async with store.transaction() as q:
            q.state_changed.update(names)
            await q.root_versions()
            assert not local
        assert local == names
        if db.dialect == "postgresql":
            await until(lambda: heard == names, "every name notified")
        else:
            assert listener.done() and not heard  # one process: nothing to hear
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
