"""The storage seam: one small interface, two real backends.

``Database`` hands out transactions; a ``Transaction`` runs SQL written once in the common
dialect of SQLite ≥ 3.35 and PostgreSQL ≥ 13: ``?`` placeholders (translated to ``$n``
for asyncpg), ``BIGINT``/``TEXT`` columns only, ``INSERT ... ON CONFLICT``,
``UPDATE ... RETURNING``. Rows come back as plain dicts. Everything above this package
(:mod:`groundcontrol.store`) is written once against this interface, and the same test
suite runs against both backends.

- ``sqlite:///path/to/gc.db`` → :class:`groundcontrol.db.sqlite.SQLiteDatabase`
  (aiosqlite, WAL, one connection, explicit ``BEGIN IMMEDIATE`` transactions)
- ``postgresql://user@host:port/db`` → :class:`groundcontrol.db.postgres.PostgresDatabase`
  (asyncpg pool; several stateless Ground Control processes may share it)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Row = dict[str, Any]


class DatabaseError(Exception):
    """The database refused or failed an operation."""


class IntegrityError(DatabaseError):
    """A unique or foreign-key constraint was violated."""


class Transaction(Protocol):
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; return the number of rows it touched."""
        ...

    async def fetchall(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchone(self, sql: str, *args: Any) -> Row | None: ...

    async def notify(self, channel: str, payload: str) -> None:
        """Tell the other processes' :meth:`Database.listen` when this transaction
        commits (PostgreSQL ``NOTIFY``; nothing on SQLite, which has one process)."""
        ...


class Database(Protocol):
    dialect: str

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction that commits when the block exits normally, else rolls back."""
        ...

    def migration_lock(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction holding the lock that serialises migrations across processes."""
        ...

    async def listen(
        self, channel: str, on_payload: Callable[[str], None], on_connect: Callable[[], None]
    ) -> None:
        """Until cancelled, pass every payload notified on ``channel`` by any process to
        ``on_payload``; call ``on_connect`` after each (re)connection, since what was
        notified while disconnected is lost. Returns at once on SQLite."""
        ...

    async def close(self) -> None: ...


async def open_database(url: str) -> Database:
    """Connect to the database named by ``url`` (no migrations are applied here)."""
    if url.startswith("sqlite://"):
        from groundcontrol.db.sqlite import SQLiteDatabase

        return await SQLiteDatabase.open(url)
    if url.startswith(("postgresql://", "postgres://")):
        from groundcontrol.db.postgres import PostgresDatabase

        return await PostgresDatabase.open(url)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")
