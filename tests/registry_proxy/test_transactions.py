"""Write transactions that a cancellation at any point leaves the connection able to use.

A task cancelled while its BEGIN, body or COMMIT is on aiosqlite's worker thread used to
leave the connection inside a transaction, and every later write failed with "cannot
start a transaction within a transaction" (seen when a satellite's fleet loops stop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
import pytest

from registry_proxy.transactions import immediate


async def _write(conn: aiosqlite.Connection, lock: asyncio.Lock, value: int) -> None:
    async with immediate(conn, lock) as c:
        await c.execute("INSERT INTO t VALUES (?)", (value,))
        await c.execute("INSERT INTO t VALUES (?)", (-value,))


async def test_cancelled_at_every_point_leaves_no_transaction_open(tmp_path: Path) -> None:
    lock = asyncio.Lock()
    async with aiosqlite.connect(tmp_path / "t.db", isolation_level=None) as conn:
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("CREATE TABLE t (v INTEGER)")
        # cancel after 0, 1, 2, … turns of the loop: in BEGIN, in the body, in COMMIT
        for value, turns in enumerate([n for n in range(12) for _ in range(4)], start=1):
            task = asyncio.create_task(_write(conn, lock, value))
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _write(conn, lock, 10_000 + value)  # the next writer always gets in
            assert not conn.in_transaction
        async with conn.execute("SELECT v FROM t") as cur:
            rows = [r[0] for r in await cur.fetchall()]
    # each transaction is whole or absent: +v and -v together
    assert sorted(rows) == sorted(-v for v in rows)
    assert sum(1 for v in rows if v > 10_000) == 48


async def test_an_error_in_the_body_rolls_back_and_releases(tmp_path: Path) -> None:
    lock = asyncio.Lock()
    async with aiosqlite.connect(tmp_path / "t.db", isolation_level=None) as conn:
        await conn.execute("CREATE TABLE t (v INTEGER)")
        with pytest.raises(RuntimeError):
            async with immediate(conn, lock) as c:
                await c.execute("INSERT INTO t VALUES (1)")
                raise RuntimeError("boom")
        assert not lock.locked() and not conn.in_transaction
        await _write(conn, lock, 2)
        async with conn.execute("SELECT v FROM t ORDER BY v") as cur:
            assert [r[0] for r in await cur.fetchall()] == [-2, 2]
