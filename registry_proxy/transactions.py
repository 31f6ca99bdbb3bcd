"""One SQLite write transaction on an aiosqlite connection, safe against cancellation.

aiosqlite runs each statement on the connection's worker thread, in the order they were
queued, and queues a statement as soon as the coroutine that runs it starts. A task
cancelled while it awaits ``BEGIN IMMEDIATE`` therefore still has its BEGIN run, after it
gave up the lock; with nothing to end it, the next writer's BEGIN fails with "cannot start
a transaction within a transaction", and so does every write after it. The same holds for
a COMMIT that fails after its caller was cancelled. ``immediate`` queues a ROLLBACK
behind whatever it could not see finish, before it lets the next writer in, so that the
connection is out of any transaction whenever the lock is free.

The three SQLite databases (the registry's metadata, the satellite's fleet database and
Ground Control's SQLite backend) open their write transactions here.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite


async def _rollback(conn: aiosqlite.Connection) -> None:
    """ROLLBACK if a transaction is open; queued behind every statement already queued."""
    # an error means none was open: the BEGIN failed, or the COMMIT went through
    with contextlib.suppress(sqlite3.OperationalError):
        await conn.execute("ROLLBACK")


@asynccontextmanager
async def immediate(
    conn: aiosqlite.Connection, lock: asyncio.Lock
) -> AsyncIterator[aiosqlite.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, one at a time under ``lock``; any error or
    cancellation, in the body or in BEGIN/COMMIT themselves, ends in a ROLLBACK."""
    async with lock:
        try:
            await conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            await _rollback(conn)  # a cancelled BEGIN still runs: end it
            raise
        try:
            yield conn
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
