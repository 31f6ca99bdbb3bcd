"""SQLite backend through aiosqlite: WAL, foreign keys, explicit transactions.

One connection per process; transactions are serialised by an asyncio lock and opened
with ``BEGIN IMMEDIATE`` so that a writer never has to upgrade a read lock (the classic
SQLite deadlock). Other processes (the ``groundcontrol admin`` CLI) wait on
``busy_timeout``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from groundcontrol.db import DatabaseError, IntegrityError, Row
from registry_proxy.transactions import immediate


def sqlite_path(url: str) -> str:
    """What follows ``sqlite:///``, as SQLAlchemy reads it: ``sqlite:///gc-data/gc.db`` is
    relative to the working directory, ``sqlite:////srv/gc/gc.db`` absolute, and
    ``sqlite:///:memory:`` is ``:memory:``."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise ValueError(f"expected sqlite:///PATH, got {url!r}")
    return url.removeprefix("sqlite:///")


class SQLiteTransaction:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            cursor = await self._conn.execute(sql, args)
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise DatabaseError(str(exc)) from exc
        try:
            return cursor.rowcount
        finally:
            await cursor.close()

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        try:
            cursor = await self._conn.execute(sql, args)
            rows = await cursor.fetchall()
            names = [d[0] for d in cursor.description or ()]
            await cursor.close()
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise DatabaseError(str(exc)) from exc
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetchall(sql, *args)
        return rows[0] if rows else None

    async def notify(self, channel: str, payload: str) -> None:
        """Nothing to do: one process uses the database, and the store wakes it."""


class SQLiteDatabase:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str) -> SQLiteDatabase:
        path = sqlite_path(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute("PRAGMA busy_timeout = 10000")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SQLiteTransaction]:
        async with immediate(self._conn, self._lock) as conn:
            yield SQLiteTransaction(conn)

    def migration_lock(self) -> Any:
        # BEGIN IMMEDIATE already excludes every other writer, in this process and others.
        return self.transaction()

    async def listen(
        self, channel: str, on_payload: Callable[[str], None], on_connect: Callable[[], None]
    ) -> None:
        """Nothing to hear: only this process publishes (see :meth:`notify`)."""

    async def close(self) -> None:
        await self._conn.close()
