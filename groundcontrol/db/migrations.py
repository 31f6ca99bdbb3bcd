"""Versioned schema migrations, the same SQL for SQLite and PostgreSQL.

Applied in order inside one transaction that holds the backend's migration lock, so that
several processes starting together apply each one exactly once. A migration is never
edited once released: add a new one. A database newer than this code is refused.

Conventions that keep the SQL portable: ``TEXT`` and ``BIGINT`` columns only (times are
Unix seconds, JSON documents are ``TEXT``), no autoincrement (ids are random text),
booleans as nullable timestamps (``revoked_at``, ``used_at``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from groundcontrol.db import Database, DatabaseError, Transaction

Backfill = Callable[[Transaction], Awaitable[None]]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    # derives new columns from existing rows where the two dialects' SQL differ (JSON)
    backfill: Backfill | None = None


async def _backfill_migration_4(tx: Transaction) -> None:
    """Failing images from each last report; contacts from the check-ins kept (with the
    default status thresholds: the config is not at hand here)."""
    from groundcontrol.status import contact_kind, contact_runs, failing_count, report_sent_at

    rows = await tx.fetchall(
        "SELECT name, last_report FROM satellites WHERE last_report IS NOT NULL"
    )
    for row in rows:
        count = failing_count(json.loads(row["last_report"]))
        if count:
            await tx.execute(
                "UPDATE satellites SET failing_images = ? WHERE name = ?", count, row["name"]
            )
    points: dict[str, list[tuple[int, str]]] = {}
    for row in await tx.fetchall("SELECT satellite, received_at, report FROM checkins"):
        sent = report_sent_at(json.loads(row["report"]), row["received_at"])
        kind = contact_kind(sent, row["received_at"], 600)
        points.setdefault(row["satellite"], []).append((sent, kind))
    for name, found in points.items():
        for start, end, kind in contact_runs(found, 3600):
            await tx.execute(
                "INSERT INTO contacts (satellite, kind, start_at, end_at) VALUES (?, ?, ?, ?)",
                name,
                kind,
                start,
                end,
            )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        (
            """CREATE TABLE api_tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                token_hash TEXT NOT NULL UNIQUE,
                created_at BIGINT NOT NULL,
                revoked_at BIGINT,
                last_used_at BIGINT
            )""",
            """CREATE TABLE groups (
                name TEXT PRIMARY KEY,
                description TEXT NOT NULL,
                images TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )""",
            """CREATE TABLE satellites (
                name TEXT PRIMARY KEY,
                labels TEXT NOT NULL,
                config TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                public_key TEXT,
                keyid TEXT,
                credential_hash TEXT UNIQUE,
                registered_at BIGINT,
                revoked_at BIGINT,
                published_version BIGINT NOT NULL DEFAULT 0,
                applied_version BIGINT,
                last_seen BIGINT,
                last_seq BIGINT NOT NULL DEFAULT 0,
                seq_floor BIGINT NOT NULL DEFAULT 0,
                last_report TEXT
            )""",
            """CREATE TABLE satellite_groups (
                satellite TEXT NOT NULL REFERENCES satellites (name) ON DELETE CASCADE,
                group_name TEXT NOT NULL REFERENCES groups (name),
                PRIMARY KEY (satellite, group_name)
            )""",
            "CREATE INDEX satellite_groups_group ON satellite_groups (group_name)",
            """CREATE TABLE join_tokens (
                id TEXT PRIMARY KEY,
                satellite TEXT NOT NULL REFERENCES satellites (name) ON DELETE CASCADE,
                token_hash TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                used_at BIGINT,
                failed_attempts BIGINT NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX join_tokens_satellite ON join_tokens (satellite)",
            """CREATE TABLE register_attempts (
                source TEXT NOT NULL,
                window_start BIGINT NOT NULL,
                attempts BIGINT NOT NULL,
                PRIMARY KEY (source, window_start)
            )""",
            """CREATE TABLE roots (
                version BIGINT PRIMARY KEY,
                envelope TEXT NOT NULL,
                created_at BIGINT NOT NULL
            )""",
            """CREATE TABLE states (
                satellite TEXT NOT NULL REFERENCES satellites (name) ON DELETE CASCADE,
                version BIGINT NOT NULL,
                envelope TEXT NOT NULL,
                content_hash TEXT NOT NULL,
                issued_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                PRIMARY KEY (satellite, version)
            )""",
            """CREATE TABLE checkins (
                satellite TEXT NOT NULL REFERENCES satellites (name) ON DELETE CASCADE,
                seq BIGINT NOT NULL,
                received_at BIGINT NOT NULL,
                state_version BIGINT NOT NULL,
                report TEXT NOT NULL,
                envelope TEXT NOT NULL,
                PRIMARY KEY (satellite, seq)
            )""",
            """CREATE TABLE upstream_credentials (
                registry TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                username TEXT NOT NULL,
                secret TEXT NOT NULL,
                groups TEXT NOT NULL,
                updated_at BIGINT NOT NULL
            )""",
            """CREATE TABLE robot_accounts (
                satellite TEXT NOT NULL REFERENCES satellites (name) ON DELETE CASCADE,
                registry TEXT NOT NULL,
                robot_id BIGINT NOT NULL,
                username TEXT NOT NULL,
                secret TEXT NOT NULL,
                projects TEXT NOT NULL,
                expires_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (satellite, registry)
            )""",
        ),
    ),
    Migration(
        2,
        "state artifacts pushed to the central registry",
        (
            # target: registry host and repository; version: the newest pushed there
            """CREATE TABLE artifact_pushes (
                target TEXT PRIMARY KEY,
                version BIGINT NOT NULL,
                digest TEXT NOT NULL,
                pushed_at BIGINT NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "dashboard sessions",
        (
            # id_hash: SHA-256 of the session cookie; a session lives only as long as the
            # operator token it was opened with (revoked tokens are joined out)
            """CREATE TABLE dashboard_sessions (
                id_hash TEXT PRIMARY KEY,
                token_id TEXT NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
                csrf TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL
            )""",
            "CREATE INDEX dashboard_sessions_token ON dashboard_sessions (token_id)",
        ),
    ),
    Migration(
        4,
        "fleet dashboard: failing images per satellite, audit log, group history",
        (
            # from the last report, so that the fleet list filters and counts in SQL
            "ALTER TABLE satellites ADD COLUMN failing_images BIGINT NOT NULL DEFAULT 0",
            "CREATE INDEX satellites_last_seen ON satellites (last_seen)",
            # who did what from the dashboard, and when; ids sort in creation order
            """CREATE TABLE audit_log (
                id TEXT PRIMARY KEY,
                at BIGINT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                detail TEXT NOT NULL
            )""",
            "CREATE INDEX audit_log_at ON audit_log (at)",
            # each change of a group's images, and the states that change published
            """CREATE TABLE group_history (
                id TEXT PRIMARY KEY,
                group_name TEXT NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
                at BIGINT NOT NULL,
                change TEXT NOT NULL,
                images TEXT NOT NULL,
                published BIGINT NOT NULL DEFAULT 0,
                min_version BIGINT,
                max_version BIGINT
            )""",
            "CREATE INDEX group_history_group ON group_history (group_name, at)",
            # when each satellite was in contact, as runs of check-ins (signing times),
            # kept for longer than the check-ins themselves
            """CREATE TABLE contacts (
                satellite TEXT NOT NULL REFERENCES satellites (name) ON DELETE CASCADE,
                kind TEXT NOT NULL,
                start_at BIGINT NOT NULL,
                end_at BIGINT NOT NULL,
                PRIMARY KEY (satellite, kind, start_at)
            )""",
        ),
        _backfill_migration_4,
    ),
)

LATEST = MIGRATIONS[-1].version


class MigrationError(DatabaseError):
    pass


async def migrate(db: Database, *, now: float | None = None) -> list[int]:
    """Bring the schema up to :data:`LATEST`; return the versions applied now."""
    stamp = int(time.time() if now is None else now)
    async with db.migration_lock() as tx:
        await tx.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at BIGINT NOT NULL
            )"""
        )
        rows = await tx.fetchall("SELECT version FROM schema_migrations")
        done = {int(r["version"]) for r in rows}
        if done and max(done) > LATEST:
            raise MigrationError(
                f"database schema version {max(done)} is newer than this Ground Control "
                f"({LATEST}); upgrade Ground Control"
            )
        applied = []
        for m in MIGRATIONS:
            if m.version in done:
                continue
            for statement in m.statements:
                await tx.execute(statement)
            if m.backfill is not None:
                await m.backfill(tx)
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                m.version,
                m.name,
                stamp,
            )
            applied.append(m.version)
        return applied


async def schema_version(db: Database) -> int:
    try:
        async with db.transaction() as tx:
            row = await tx.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
    except DatabaseError:  # no schema_migrations table yet
        return 0
    return int(row["v"]) if row and row["v"] is not None else 0
