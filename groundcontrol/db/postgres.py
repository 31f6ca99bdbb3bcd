"""PostgreSQL backend through asyncpg.

A pool per process; each transaction holds one connection. Ground Control processes are
stateless, so any number of them may share one database: every read-modify-write in
:mod:`groundcontrol.store` is a single ``UPDATE ... RETURNING`` or ``INSERT ... ON
CONFLICT`` (row locks do the rest), and migrations take a transaction-scoped advisory
lock so that processes starting together apply each migration once.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from groundcontrol.db import DatabaseError, IntegrityError, Row

MIGRATION_LOCK_ID = 0x67636D69  # "gcmi"
_PLACEHOLDER = re.compile(r"\?")


def translate(sql: str) -> str:
    """``?`` placeholders → ``$1``, ``$2`` … (our SQL has no ``?`` inside literals)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


class PostgresTransaction:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            status: str = await self._conn.execute(translate(sql), *args)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc
        except asyncpg.PostgresError as exc:
            raise DatabaseError(str(exc)) from exc
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        try:
            records = await self._conn.fetch(translate(sql), *args)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc
        except asyncpg.PostgresError as exc:
            raise DatabaseError(str(exc)) from exc
        return [dict(r.items()) for r in records]

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetchall(sql, *args)
        return rows[0] if rows else None


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, max_size: int = 10) -> PostgresDatabase:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size)
        return cls(pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield PostgresTransaction(conn)

    @asynccontextmanager
    async def migration_lock(self) -> AsyncIterator[PostgresTransaction]:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            yield PostgresTransaction(conn)

    async def close(self) -> None:
        await self._pool.close()
