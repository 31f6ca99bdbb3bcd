"""The fleet database: seqs used once, acks remove rows, a bounded outbox that counts what
it dropped, the highest accepted version that only grows, and a refusal to write that
loses nothing already stored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.fleetdb import EVENT, HEARTBEAT, FleetDB, FleetDBError


async def test_seqs_are_contiguous_and_acks_remove_rows(tmp_path: Path) -> None:
    async with FleetDB(tmp_path / "fleet.db") as db:
        seqs = [await db.enqueue(HEARTBEAT, lambda s: b"hb%d" % s, 1.0) for _ in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        assert [s for s, _ in await db.pending(3)] == [1, 2, 3]
        assert await db.ack(3, [1, 2, 99]) == 2
        stats = await db.outbox_stats()
        assert (stats.depth, stats.sent, stats.acked, stats.next_seq) == (3, 3, 2, 6)
    # numbering continues after a reopen: a seq is never reused
    async with FleetDB(tmp_path / "fleet.db") as db:
        assert await db.enqueue(EVENT, lambda s: b"ev%d" % s, 2.0) == 6
        assert [body for _, body in await db.pending(10)] == [b"hb3", b"hb4", b"hb5", b"ev6"]


async def test_a_failed_signature_uses_no_seq(tmp_path: Path) -> None:
    def broken(seq: int) -> bytes:
        raise RuntimeError("no key")

    async with FleetDB(tmp_path / "fleet.db") as db:
        with pytest.raises(RuntimeError):
            await db.enqueue(EVENT, broken, 1.0)
        assert await db.enqueue(EVENT, lambda s: b"x", 1.0) == 1
        assert (await db.outbox_stats()).depth == 1


async def test_heartbeats_are_compacted_and_events_capped(tmp_path: Path) -> None:
    async with FleetDB(tmp_path / "fleet.db", max_heartbeats=3, max_event_bytes=100) as db:
        for _ in range(10):
            await db.enqueue(HEARTBEAT, lambda s: b"h" * 10, 1.0)
        for _ in range(5):
            await db.enqueue(EVENT, lambda s: b"e" * 40, 1.0)
        stats = await db.outbox_stats()
        assert stats.dropped_heartbeats == 7
        assert stats.dropped_events == 3  # 5 x 40 bytes, 100 allowed: the oldest 3 go
        left = [seq for seq, _ in await db.pending(100)]
        assert left == [8, 9, 10, 14, 15]  # the newest of each kind survive


async def test_the_highest_accepted_version_only_grows(tmp_path: Path) -> None:
    async with FleetDB(tmp_path / "fleet.db") as db:
        await db.save_trust([(1, b"root1")], (5, b"state5"), 1.0)
        await db.save_trust([(2, b"root2"), (1, b"other")], (3, b"state3"), 2.0)
        trust = await db.load_trust()
        assert trust.root_chain == [b"root1", b"root2"]  # a stored root is never replaced
        assert (trust.state_envelope, trust.state_version) == (b"state3", 3)
        assert trust.highest_version == 5


async def test_a_read_only_database_refuses_writes_and_keeps_what_it_has(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    async with FleetDB(path) as db:
        await db.enqueue(EVENT, lambda s: b"kept", 1.0)
    uri_db = FleetDB(path)
    await uri_db.open()
    try:
        await uri_db.conn.execute("PRAGMA query_only = ON")
        with pytest.raises(FleetDBError):
            await uri_db.enqueue(EVENT, lambda s: b"lost", 2.0)
        with pytest.raises(FleetDBError):
            await uri_db.save_trust([], (9, b"s"), 2.0)
    finally:
        await uri_db.close()
    rows = sqlite3.connect(path).execute("SELECT seq, envelope FROM outbox").fetchall()
    assert rows == [(1, b"kept")]


async def test_image_results_change_only_when_they_change(tmp_path: Path) -> None:
    async with FleetDB(tmp_path / "fleet.db") as db:
        assert await db.set_image_result("r", "sha256:a", "missing", None, 1.0)
        assert not await db.set_image_result("r", "sha256:a", "missing", None, 2.0)
        assert await db.set_image_result("r", "sha256:a", "failed", "404", 3.0)
        await db.set_image_result("gone", "sha256:b", "present", None, 3.0)
        await db.forget_images([("r", "sha256:a")])
        assert [(r.repository, r.status) for r in await db.image_results()] == [("r", "failed")]
