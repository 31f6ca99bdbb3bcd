"""The storage interface against both backends: migrations, atomicity, constraints."""

from __future__ import annotations

import asyncio

import pytest

from groundcontrol.db import Database, open_database
from groundcontrol.db.migrations import LATEST, MigrationError, migrate, schema_version
from groundcontrol.errors import Conflict, NotFound
from groundcontrol.models import parse_images
from groundcontrol.store import Store


async def test_migrations_are_applied_once_and_recorded(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        assert await schema_version(db) == 0
        assert await migrate(db) == list(range(1, LATEST + 1))
        assert await migrate(db) == []
        assert await schema_version(db) == LATEST
    finally:
        await db.close()


async def test_concurrent_migrations_from_two_connections_apply_once(database_url: str) -> None:
    a, b = await open_database(database_url), await open_database(database_url)
    try:
        results = await asyncio.gather(migrate(a), migrate(b))
        assert sorted(results, key=len) == [[], list(range(1, LATEST + 1))]
    finally:
        await a.close()
        await b.close()


async def test_a_newer_schema_is_refused(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            LATEST + 1,
            "from the future",
            0,
        )
    with pytest.raises(MigrationError, match="newer"):
        await migrate(db)


async def test_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as q:
            await q.insert_group("edge", "", (), 1)
            raise RuntimeError("boom")
    async with store.transaction() as q:
        with pytest.raises(NotFound):
            await q.group("edge")


async def test_groups_round_trip_and_conflict(store: Store) -> None:
    images = parse_images(
        [
            "library/nginx:1.25",
            {"reference": "app@sha256:" + "a" * 64, "platforms": ["linux/arm64"]},
        ]
    )
    async with store.transaction() as q:
        await q.insert_group("edge", "shops", images, 100)
    async with store.transaction() as q:
        group = await q.group("edge")
        assert group.images == images
        assert group.description == "shops"
        with pytest.raises(Conflict) as exc:
            await q.insert_group("edge", "", (), 101)
        assert exc.value.code == "group_exists"


async def test_satellite_membership_and_group_in_use(store: Store) -> None:
    async with store.transaction() as q:
        await q.insert_group("a", "", (), 1)
        await q.insert_group("b", "", (), 1)
        await q.insert_satellite("s1", ("a", "b"), {"site": "x"}, {}, 1)
        await q.insert_satellite("s2", ("b",), {}, {}, 1)
    async with store.transaction() as q:
        assert await q.group_members("b") == ["s1", "s2"]
        sats = await q.satellites()
        assert [(s.name, s.groups) for s in sats] == [("s1", ("a", "b")), ("s2", ("b",))]
        with pytest.raises(Conflict) as exc:
            await q.delete_group("b")
        assert exc.value.code == "group_in_use"
    async with store.transaction() as q:
        with pytest.raises(NotFound) as nf:
            await q.insert_satellite("s3", ("nope",), {}, {}, 1)
        assert nf.value.code == "group_not_found"
    async with store.transaction() as q:
        await q.delete_satellite("s1")
        assert await q.group_members("a") == []
        await q.delete_group("a")


async def test_state_versions_increase_under_concurrency(store: Store) -> None:
    async with store.transaction() as q:
        await q.insert_satellite("s1", (), {}, {}, 1)

    async def bump() -> int:
        async with store.transaction() as q:
            return await q.next_state_version("s1")

    versions = await asyncio.gather(*(bump() for _ in range(20)))
    assert sorted(versions) == list(range(1, 21))


async def test_join_token_is_used_once(store: Store) -> None:
    async with store.transaction() as q:
        await q.insert_satellite("s1", (), {}, {}, 1)
        await q.insert_join_token("t1", "s1", "h", 1, 100)

    async def use() -> bool:
        async with store.transaction() as q:
            return await q.use_join_token("t1", 50, 5)

    results = await asyncio.gather(*(use() for _ in range(5)))
    assert sorted(results) == [False] * 4 + [True]


async def test_checkin_insert_is_idempotent_and_pruned(store: Store) -> None:
    async with store.transaction() as q:
        await q.insert_satellite("s1", (), {}, {}, 1)
        for seq in range(1, 11):
            assert await q.insert_checkin("s1", seq, 1, {"seq": seq}, "{}", 5)
        assert not await q.insert_checkin("s1", 3, 1, {}, "{}", 5)
        await q.prune_checkins("s1", keep=4)
        rows = await q.checkins("s1", limit=100)
        assert [r["seq"] for r in rows] == [10, 9, 8, 7]
        assert await q.checkin_bounds("s1") == (0, 6)


async def test_register_attempts_count_per_window(store: Store) -> None:
    counts = []
    for _ in range(3):
        async with store.transaction() as q:
            counts.append(await q.count_register_attempt("10.0.0.1", 60))
    async with store.transaction() as q:
        other = await q.count_register_attempt("10.0.0.1", 120)
    assert counts == [1, 2, 3]
    assert other == 1
