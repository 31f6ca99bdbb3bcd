"""The satellite's fleet database (SQLite, WAL): trust, the check-in outbox, image results.

One file in the identity directory (see identity.py), so that re-registering swaps it
with everything else. What it guarantees:

- the root chain and the applied state are stored as the bytes that were verified, and
  the highest state version ever accepted is stored with them in the same transaction,
  so a rollback stays refused across restarts;
- a check-in gets its sequence number, its signature and its outbox row in one
  transaction: a crash leaves either no check-in or a complete one, never a reused seq;
- a row leaves the outbox only when Ground Control acknowledged its seq;
- the outbox is bounded: past ``max_heartbeats`` the oldest heartbeats are dropped, past
  ``max_event_bytes`` the oldest events; what was dropped is counted and reported.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from registry_proxy.transactions import immediate

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS roots (
    version INTEGER PRIMARY KEY,
    envelope BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS trust (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state_envelope BLOB,
    state_version INTEGER NOT NULL DEFAULT 0,
    highest_version INTEGER NOT NULL DEFAULT 0,
    accepted_at REAL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,             -- 'heartbeat' or 'event'
    created_at REAL NOT NULL,
    envelope BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, seq);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE TABLE IF NOT EXISTS facts (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO trust (id) VALUES (1);
"""

HEARTBEAT = "heartbeat"
EVENT = "event"


class FleetDBError(Exception):
    """The fleet database cannot be written (e.g. the disk is full)."""


@dataclass(frozen=True)
class StoredTrust:
    root_chain: list[bytes]
    state_envelope: bytes | None
    state_version: int
    highest_version: int
    accepted_at: float | None


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest: float | None
    next_seq: int
    sent: int
    acked: int
    dropped_heartbeats: int
    dropped_events: int

    @property
    def dropped(self) -> int:
        return self.dropped_heartbeats + self.dropped_events


@dataclass(frozen=True)
class ImageResult:
    repository: str
    digest: str
    status: str
    error: str | None
    updated_at: float


class FleetDB:
    def __init__(
        self,
        path: Path,
        *,
        max_heartbeats: int = 64,
        max_event_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.path = path
        self.max_heartbeats = max_heartbeats
        self.max_event_bytes = max_event_bytes
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> FleetDB:
        self.path.touch(mode=0o600, exist_ok=True)  # SQLite gives -wal/-shm the same mode
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.executescript(SCHEMA)
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        if row is not None and row[0] > SCHEMA_VERSION:
            await conn.close()
            raise FleetDBError(f"{self.path}: schema version {row[0]} is newer than this code")
        await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._conn = conn
        return self

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def __aenter__(self) -> FleetDB:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def conn(self) -> aiosqlite.Connection:
        assert self._conn is not None, "fleet database not opened"
        return self._conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        try:
            async with immediate(self.conn, self._lock) as conn:
                yield conn
        except sqlite3.OperationalError as exc:
            raise FleetDBError(f"{self.path}: {exc}") from exc

    async def _scalar(self, sql: str, params: Iterable[object] = ()) -> object:
        async with self.conn.execute(sql, tuple(params)) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]

    # -- trust ------------------------------------------------------------------------

    async def load_trust(self) -> StoredTrust:
        async with self.conn.execute("SELECT envelope FROM roots ORDER BY version") as cur:
            chain = [bytes(row[0]) for row in await cur.fetchall()]
        async with self.conn.execute(
            "SELECT state_envelope, state_version, highest_version, accepted_at FROM trust"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        envelope = None if row[0] is None else bytes(row[0])
        return StoredTrust(chain, envelope, int(row[1]), int(row[2]), row[3])

    async def save_trust(
        self,
        roots: Sequence[tuple[int, bytes]],
        state: tuple[int, bytes] | None,
        now: float,
        *,
        unreported: bool = False,
    ) -> None:
        """Store new roots and (optionally) a newly accepted state in one transaction.

        The highest accepted version only ever grows, whatever the caller passes.
        ``unreported``: accepted where no agent ran (a bundle imported into a stopped
        data dir); the agent queues its ``state_accepted`` event when it starts.
        """
        async with self._transaction() as conn:
            await conn.executemany(
                "INSERT OR IGNORE INTO roots (version, envelope) VALUES (?, ?)", roots
            )
            if state is not None:
                version, envelope = state
                await conn.execute(
                    "UPDATE trust SET state_envelope = ?, state_version = ?,"
                    " highest_version = MAX(highest_version, ?), accepted_at = ?",
                    (envelope, version, version, now),
                )
                if unreported:
                    await conn.execute(
                        "INSERT INTO counters (name, value) VALUES ('unreported_state', ?)"
                        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        (version,),
                    )

    async def unreported_state(self) -> int:
        """The version of a state accepted with no agent running, not yet reported (0)."""
        return await self._counter(self.conn, "unreported_state")

    async def reported_state(self, version: int) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "DELETE FROM counters WHERE name = 'unreported_state' AND value <= ?", (version,)
            )

    # -- outbox -----------------------------------------------------------------------

    async def _counter(self, conn: aiosqlite.Connection, name: str) -> int:
        async with conn.execute("SELECT value FROM counters WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def _add(self, conn: aiosqlite.Connection, name: str, delta: int) -> None:
        await conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, delta),
        )

    async def enqueue(self, kind: str, sign: Callable[[int], bytes], now: float) -> int:
        """Number, sign and queue one check-in atomically; returns its seq.

        ``sign(seq)`` builds and signs the check-in for that seq. It runs inside the
        transaction, so the seq is used exactly once whether or not a crash follows.
        """
        assert kind in (HEARTBEAT, EVENT)
        async with self._transaction() as conn:
            seq = await self._counter(conn, "next_seq") or 1
            envelope = sign(seq)
            await conn.execute(
                "INSERT INTO outbox (seq, kind, created_at, envelope) VALUES (?, ?, ?, ?)",
                (seq, kind, now, envelope),
            )
            await conn.execute(
                "INSERT INTO counters (name, value) VALUES ('next_seq', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (seq + 1,),
            )
            await self._compact(conn)
        return seq

    async def _compact(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = ?", (HEARTBEAT,)) as cur:
            row = await cur.fetchone()
        extra = (int(row[0]) if row else 0) - self.max_heartbeats
        if extra > 0:
            await conn.execute(
                "DELETE FROM outbox WHERE seq IN"
                " (SELECT seq FROM outbox WHERE kind = ? ORDER BY seq LIMIT ?)",
                (HEARTBEAT, extra),
            )
            await self._add(conn, "dropped_heartbeats", extra)
        async with conn.execute(
            "SELECT COALESCE(SUM(LENGTH(envelope)), 0) FROM outbox WHERE kind = ?", (EVENT,)
        ) as cur:
            row = await cur.fetchone()
        excess = (int(row[0]) if row else 0) - self.max_event_bytes
        dropped = 0
        while excess > 0:
            async with conn.execute(
                "SELECT seq, LENGTH(envelope) FROM outbox WHERE kind = ? ORDER BY seq LIMIT 1",
                (EVENT,),
            ) as cur:
                oldest = await cur.fetchone()
            if oldest is None:
                break
            await conn.execute("DELETE FROM outbox WHERE seq = ?", (oldest[0],))
            excess -= int(oldest[1])
            dropped += 1
        if dropped:
            await self._add(conn, "dropped_events", dropped)

    async def pending(self, limit: int) -> list[tuple[int, bytes]]:
        async with self.conn.execute(
            "SELECT seq, envelope FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ) as cur:
            return [(int(row[0]), bytes(row[1])) for row in await cur.fetchall()]

    async def ack(self, sent: int, acked: Sequence[int]) -> int:
        """Remove acknowledged seqs; count ``sent`` attempts. Returns rows removed."""
        async with self._transaction() as conn:
            before = conn.total_changes
            await conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in acked])
            removed = conn.total_changes - before
            await self._add(conn, "sent", sent)
            await self._add(conn, "acked", removed)
        return removed

    async def outbox_stats(self) -> OutboxStats:
        async with self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0), MIN(created_at) FROM outbox"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        async with self.conn.execute("SELECT name, value FROM counters") as cur:
            counters = {name: int(value) for name, value in await cur.fetchall()}
        return OutboxStats(
            depth=int(row[0]),
            bytes=int(row[1]),
            oldest=row[2],
            next_seq=counters.get("next_seq", 1),
            sent=counters.get("sent", 0),
            acked=counters.get("acked", 0),
            dropped_heartbeats=counters.get("dropped_heartbeats", 0),
            dropped_events=counters.get("dropped_events", 0),
        )

    # -- image results and facts ---------------------------------------------------------

    async def set_image_result(
        self, repository: str, digest: str, status: str, error: str | None, now: float
    ) -> bool:
        """Record an image's result; True when it changed (worth an event)."""
        async with self._transaction() as conn:
            async with conn.execute(
                "SELECT status, error FROM images WHERE repository = ? AND digest = ?",
                (repository, digest),
            ) as cur:
                row = await cur.fetchone()
            if row is not None and (row[0], row[1]) == (status, error):
                return False
            await conn.execute(
                "INSERT INTO images (repository, digest, status, error, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (repository, digest) DO UPDATE SET"
                " status = excluded.status, error = excluded.error,"
                " updated_at = excluded.updated_at",
                (repository, digest, status, error, now),
            )
        return True

    async def image_results(self) -> list[ImageResult]:
        async with self.conn.execute(
            "SELECT repository, digest, status, error, updated_at FROM images"
            " ORDER BY repository, digest"
        ) as cur:
            return [ImageResult(*row) for row in await cur.fetchall()]

    async def forget_images(self, keep: Iterable[tuple[str, str]]) -> None:
        """Drop results of images no longer in the state."""
        wanted = set(keep)
        async with self._transaction() as conn:
            async with conn.execute("SELECT repository, digest FROM images") as cur:
                stale = [tuple(row) for row in await cur.fetchall() if tuple(row) not in wanted]
            await conn.executemany("DELETE FROM images WHERE repository = ? AND digest = ?", stale)

    async def get_fact(self, name: str) -> str | None:
        value = await self._scalar("SELECT value FROM facts WHERE name = ?", (name,))
        return None if value is None else str(value)

    async def set_facts(self, facts: dict[str, str | None]) -> None:
        async with self._transaction() as conn:
            for name, value in facts.items():
                if value is None:
                    await conn.execute("DELETE FROM facts WHERE name = ?", (name,))
                else:
                    await conn.execute(
                        "INSERT INTO facts (name, value) VALUES (?, ?) ON CONFLICT (name)"
                        " DO UPDATE SET value = excluded.value",
                        (name, value),
                    )
