"""PostgreSQL backend through asyncpg.

A pool per process; each transaction holds one connection. Ground Control processes are
stateless, so any number of them may share one database: every read-modify-write in
:mod:`groundcontrol.store` is a single ``UPDATE ... RETURNING`` or ``INSERT ... ON
CONFLICT`` (row locks do the rest), and migrations take a transaction-scoped advisory
lock so that processes starting together apply each migration once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from groundcontrol.db import DatabaseError, IntegrityError, Row
from registry_proxy.waits import wait_event

log = logging.getLogger("groundcontrol.db")

MIGRATION_LOCK_ID = 0x67636D69  # "gcmi"
LISTEN_APPLICATION_NAME = "groundcontrol-listen"
LISTEN_KEEPALIVE = 30.0  # seconds between checks that the LISTEN connection is alive
LISTEN_TIMEOUT = 10.0
LISTEN_RETRY_MIN, LISTEN_RETRY_MAX = 0.1, 5.0
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

    async def notify(self, channel: str, payload: str) -> None:
        # delivered when (and only if) the transaction commits
        await self.execute("SELECT pg_notify(?, ?)", channel, payload)


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self._url = url

    @classmethod
    async def open(cls, url: str, *, max_size: int = 10) -> PostgresDatabase:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size)
        return cls(pool, url)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield PostgresTransaction(conn)

    @asynccontextmanager
    async def migration_lock(self) -> AsyncIterator[PostgresTransaction]:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            yield PostgresTransaction(conn)

    async def listen(
        self, channel: str, on_payload: Callable[[str], None], on_connect: Callable[[], None]
    ) -> None:
        """A dedicated connection (not from the pool: a pooled one would be handed back
        and lose its LISTEN), re-established after any loss with a bounded backoff. A
        ``SELECT 1`` every ``LISTEN_KEEPALIVE`` seconds finds a connection that died
        without a word (a half-open TCP connection never reports its loss)."""
        delay = LISTEN_RETRY_MIN
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._url,
                    timeout=LISTEN_TIMEOUT,
                    server_settings={"application_name": LISTEN_APPLICATION_NAME},
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, event=lost: event.set())
                await conn.add_listener(
                    channel, lambda _conn, _pid, _channel, payload: on_payload(payload)
                )
                on_connect()
                delay = LISTEN_RETRY_MIN
                while not lost.is_set():
                    if not await wait_event(lost, LISTEN_KEEPALIVE):
                        async with asyncio.timeout(LISTEN_TIMEOUT):
                            await conn.execute("SELECT 1")
                log.warning("the LISTEN connection was closed; reconnecting")
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN %s: %s; reconnecting in %.1fs", channel, exc, delay)
            except Exception:  # a bug must not end the listening for good
                log.exception("LISTEN %s failed; reconnecting in %.1fs", channel, delay)
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RETRY_MAX)

    async def close(self) -> None:
        await self._pool.close()
